"""Output heads: linear regression/classification, and the Galaxy Zoo decision-tree head (Dieleman et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from geocnn.data.schema import DecisionTree

EPS = 1e-6


class DecisionTreeHead(nn.Module):
    """Linear layer to one output per answer, then per question rectify-and-normalise, scaled by the parent answer.

    For every input the answers of a root question sum to 1 and those of a child question sum to the value of
    its parent answer (a small epsilon after the ReLU keeps an all-zero question well defined).
    """

    def __init__(self, in_features: int, tree: DecisionTree) -> None:
        super().__init__()
        self.tree = tree
        self.linear = nn.Linear(in_features, len(tree.columns))
        self._slices = tree.slices()

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw outputs (B, A) to vote fractions obeying the tree."""
        parts: list[torch.Tensor] = []
        flat: list[torch.Tensor] = []
        for start, stop, parent in self._slices:
            q = torch.relu(raw[:, start:stop]) + EPS
            q = q / q.sum(dim=1, keepdim=True)
            if parent is not None:
                q = q * torch.cat(flat, dim=1)[:, parent:parent + 1]
            parts.append(q)
            flat.append(q)
        return torch.cat(parts, dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.constrain(self.linear(features))


class DirichletHead(nn.Module):
    """Dirichlet concentrations per answer in [1, 100], as Zoobot (sigmoid * 99 + 1)."""

    def __init__(self, in_features: int, n_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(features)) * 99.0 + 1.0


class LinearHead(nn.Module):
    """A linear layer, optionally squashed to the unit interval (regression of fractions)."""

    def __init__(self, in_features: int, n_outputs: int, sigmoid: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_outputs)
        self.sigmoid = sigmoid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.linear(features)
        return torch.sigmoid(out) if self.sigmoid else out
