"""GeoNet: normalisation + timm encoder + dropout + head; the one module that bundles save and predict loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from geocnn.models.backbones import create_encoder
from geocnn.models.heads import DecisionTreeHead, DirichletHead, LinearHead
from geocnn.models.losses import expected_fractions
from geocnn.data.schema import KAGGLE_TREE, DecisionTree, questions_from_columns


@dataclass
class NetSpec:
    """Everything needed to rebuild the network (stored in bundle.json)."""

    backbone: str
    in_chans: int
    task: str
    targets: list[str]
    classes: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    dropout: float = 0.0
    sigmoid: bool = False
    tree: str = "kaggle"
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    @property
    def n_outputs(self) -> int:
        """Width of the head."""
        return len(self.classes) if self.task == "classification" else len(self.targets)

    def decision_tree(self) -> DecisionTree:
        """The tree for vote tasks: the Kaggle tree for fractions, question groups from column names for counts."""
        if self.task == "vote_fractions":
            if self.targets != KAGGLE_TREE.columns:
                raise ValueError("task vote_fractions needs the 37 Kaggle columns Class1.1..Class11.6 as targets, "
                                 "in order; for other fractions use task regression with model.sigmoid=true")
            return KAGGLE_TREE
        return questions_from_columns(self.targets)


class GeoNet(nn.Module):
    """Maps raw chips (B, C, H, W, any dtype) to head outputs; ``predict`` gives user-facing values."""

    def __init__(self, spec: NetSpec, weights: str = "random") -> None:
        super().__init__()
        self.spec = spec
        self.encoder = create_encoder(spec.backbone, spec.in_chans, weights)
        width = self.encoder.num_features
        self.dropout = nn.Dropout(spec.dropout)
        if spec.task == "vote_fractions":
            self.head: nn.Module = DecisionTreeHead(width, spec.decision_tree())
        elif spec.task == "vote_counts":
            self.head = DirichletHead(width, spec.n_outputs)
        else:
            self.head = LinearHead(width, spec.n_outputs, sigmoid=spec.sigmoid and spec.task == "regression")
        mean = torch.tensor(spec.mean or [0.0] * spec.in_chans, dtype=torch.float32)
        std = torch.tensor(spec.std or [1.0] * spec.in_chans, dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        t = spec.n_outputs
        self.register_buffer("y_mean", torch.tensor(spec.target_mean or [0.0] * t, dtype=torch.float32).view(1, -1))
        self.register_buffer("y_std", torch.tensor(spec.target_std or [1.0] * t, dtype=torch.float32).view(1, -1))

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """Raw chips to float, standardised with the train-split band statistics; nodata (NaN) becomes the band mean."""
        return torch.nan_to_num((chips.float() - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0)

    def features(self, chips: torch.Tensor) -> torch.Tensor:
        """Encoder features (before dropout and head) of raw chips: the stage-2 input of two-stage transfer."""
        return self.encoder(self.normalise(chips))

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Head outputs (logits, values, fractions or concentrations) from normalised input."""
        return self.head(self.dropout(self.encoder(x)))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.forward_normalised(self.normalise(chips))

    def to_prediction(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs to user-facing values: class probabilities, fractions, or regression values."""
        if self.spec.task == "classification":
            return torch.softmax(out.float(), dim=1)
        if self.spec.task == "vote_counts":
            return expected_fractions(out.float(), self.spec.decision_tree())
        if self.spec.task == "regression" and not self.spec.sigmoid:
            return out.float() * self.y_std + self.y_mean
        return out.float()

    def standardise_target(self, y: torch.Tensor) -> torch.Tensor:
        """Regression targets in the head's units: standardised with the train-split target mean/std."""
        if self.spec.task == "regression" and not self.spec.sigmoid:
            return (y.float() - self.y_mean) / self.y_std
        return y
