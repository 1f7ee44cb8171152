"""GeoNet: normalisation + timm encoder + dropout + head; the one module that bundles save and predict loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from geocnn.data.schema import DecisionTree
from geocnn.models.backbones import create_encoder
from geocnn.models.tasks import Targets, TaskSpec, task_spec


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
    def task_spec(self) -> TaskSpec:
        """The task's behaviour (head, loss, predictions, metrics)."""
        return task_spec(self.task)

    @property
    def target_info(self) -> Targets:
        """Target names, classes and options, as the task spec takes them."""
        return Targets(list(self.targets), list(self.classes), self.sigmoid)

    @property
    def n_outputs(self) -> int:
        """Width of the head."""
        return self.task_spec.n_outputs(self.target_info)

    def decision_tree(self) -> DecisionTree | None:
        """The question tree of vote tasks (None for others)."""
        return self.task_spec.tree(self.target_info)


class GeoNet(nn.Module):
    """Maps raw chips (B, C, H, W, any dtype) to head outputs; ``predict`` gives user-facing values."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = create_encoder(spec.backbone, spec.in_chans)
        self.task = spec.task_spec
        self.task.check_targets(spec.target_info)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = self.task.head(self.encoder.num_features, spec.target_info)
        mean = torch.tensor(spec.mean or [0.0] * spec.in_chans, dtype=torch.float32)
        std = torch.tensor(spec.std or [1.0] * spec.in_chans, dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        t = spec.n_outputs
        self.register_buffer("y_mean", torch.tensor(spec.target_mean or [0.0] * t, dtype=torch.float32).view(1, -1))
        self.register_buffer("y_std", torch.tensor(spec.target_std or [1.0] * t, dtype=torch.float32).view(1, -1))

    def set_normalisation(self, mean: list[float], std: list[float]) -> None:
        """Use these per-band statistics (chip units) instead of the spec's (e.g. the pretrained weights' own)."""
        self.spec.mean, self.spec.std = [float(m) for m in mean], [float(s) for s in std]
        self.mean.copy_(torch.tensor(self.spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(self.spec.std, dtype=torch.float32).view(1, -1, 1, 1))

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
        """Head outputs to user-facing values: class probabilities, fractions, or values in the target's units."""
        return self.task.to_prediction(out, self.spec.target_info, self.y_mean, self.y_std)

    def loss(self, name: str, out: torch.Tensor, y: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The task's loss ``name`` of head outputs against targets (continuous ones standardised as the head)."""
        return self.task.loss(name, out, y, self.spec.target_info, self.y_mean, self.y_std, class_weights)
