"""One experiment's config: a union on the domain, so a galaxy run carries no Earth keys and vice versa."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from geocnn.config.common import (
    AugmentConfig,
    ModelConfig,
    OrchestrationConfig,
    ScheduleConfig,
    SplitConfig,
    Strict,
    TrackingConfig,
    TrainConfig,
)
from geocnn.config.earth import EARTH_FORMATS, EarthConfig, EarthData, MapsConfig, TwoStageConfig
from geocnn.config.galaxy import GalaxyData
from geocnn.config.pretrain import PretrainConfig
from geocnn.config.tune import TuneConfig
from geocnn.config.uncertainty import UncertaintyConfig

EARTH_SECTIONS = ("earth", "two_stage", "maps")
"""Sections only an Earth experiment has."""


class ExperimentBase(Strict):
    """What every experiment has: data -> split -> model -> training -> evaluation -> exports."""

    name: str = Field("experiment", description="Experiment/run name.")
    seed: int = Field(0, description="Seed for weights init, augmentation and data order.")
    output_dir: str = Field("data/runs/{name}", description="Outputs: checkpoints, bundle, metrics.json, "
                            "predictions, plots. '{name}' expands to the experiment name.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    pretrain: PretrainConfig | None = Field(None, description="Self-supervised encoder pretraining (`geocnn "
                                            "pretrain`); unset: defaults when that command runs.")

    @property
    def out(self) -> Path:
        """The resolved output directory."""
        return Path(self.output_dir.format(name=self.name))

    @model_validator(mode="after")
    def _one_kind_of_parallelism(self) -> "ExperimentBase":
        ddp = self.train.strategy != "auto" or self.train.num_nodes > 1 or self.train.devices not in (1, "auto")
        if ddp and self.orchestration.task_runner != "sequential":
            raise ValueError(f"train.devices={self.train.devices} / train.strategy={self.train.strategy} trains one "
                             "model on several processes, and orchestration.task_runner="
                             f"{self.orchestration.task_runner} trains folds side by side: pick one (set "
                             "orchestration.task_runner: sequential for data-parallel training)")
        return self


class GalaxyExperiment(ExperimentBase):
    """A galaxy experiment: cut-outs and a catalog -> morphology (classes, vote fractions, vote counts, values)."""

    domain: Literal["galaxy"] = Field("galaxy", description="galaxy (cut-outs + catalog) or earth (survey points + "
                                      "scenes or tiles); default from data.format.")
    data: GalaxyData = Field(default_factory=GalaxyData)


class EarthExperiment(ExperimentBase):
    """An Earth experiment: survey clusters with scene windows or tiles -> a continuous indicator, maps."""

    domain: Literal["earth"] = Field("earth", description="galaxy or earth; default from data.format.")
    data: EarthData = Field(default_factory=EarthData)
    earth: EarthConfig = Field(default_factory=EarthConfig)
    two_stage: TwoStageConfig = Field(default_factory=TwoStageConfig)
    maps: MapsConfig = Field(default_factory=MapsConfig)

    @model_validator(mode="before")
    @classmethod
    def _earth_defaults(cls, tree: Any) -> Any:
        """Survey targets are continuous (task regression) and clusters are spatially autocorrelated: unless
        configured, split by group (data.group_column) or by spatial blocks, never at random."""
        if not isinstance(tree, dict):
            return tree
        tree = dict(tree)
        model = dict(tree.get("model") or {})
        model.setdefault("task", "regression")
        split = dict(tree.get("split") or {})
        if "method" not in split:
            split["method"] = "grouped" if (tree.get("data") or {}).get("group_column") else "blocks"
        return {**tree, "model": model, "split": split}

    @model_validator(mode="after")
    def _consistent(self) -> "EarthExperiment":
        errors = []
        if self.split.method in ("random", "stratified"):
            errors.append(f"split.method={self.split.method}: survey clusters are spatially autocorrelated, so a "
                          "random split overstates accuracy; use split.method=grouped (with data.group_column, e.g. "
                          "country) or split.method=blocks (split.block_km)")
        if self.model.task != "regression":
            errors.append(f"model.task={self.model.task!r}: survey targets are continuous; use model.task=regression "
                          "(two-stage transfer picks stage 1's task from earth.label_classes)")
        if self.data.format == "survey":
            if not self.data.catalog:
                errors.append("data.catalog: data.format=survey needs the survey file (CSV, Parquet or GeoJSON points)")
            if not self.data.targets:
                errors.append("data.targets is empty: name the survey column(s) to predict (e.g. [wealthpooled])")
            if not self.earth.scenes and not self.data.tiles:
                errors.append("earth.scenes / data.tiles: give the scenes to cut chips from around each point, or "
                              "data.tiles (a tile per cluster)")
            if self.earth.scenes and not self.data.tiles and self.earth.chip_m is None and self.earth.chip_px is None:
                errors.append("earth.chip_m / earth.chip_px: set the chip footprint in metres or native pixels")
        if self.two_stage.enabled and not self.earth.label_raster and self.data.format == "survey":
            errors.append("two_stage.enabled needs earth.label_raster (the night-light raster stage 1 learns)")
        if self.maps.enabled and not self.earth.scenes and self.data.format == "survey":
            errors.append("maps.enabled: maps are predicted over earth.scenes, and none are given; set "
                          "maps.enabled: false or list earth.scenes")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def maps_enabled(self) -> bool:
        """Whether the run writes a map: as configured, else when there are scenes (or generated ones)."""
        if self.maps.enabled is not None:
            return self.maps.enabled
        return bool(self.earth.scenes) or self.data.format == "synthetic_earth"


def domain_of(tree: Any) -> str:
    """The domain of a config tree: its 'domain' key, else from data.format (Earth formats make an Earth run)."""
    if isinstance(tree, (GalaxyExperiment, EarthExperiment)):
        return tree.domain
    if isinstance(tree, dict):
        if "domain" in tree:
            return str(tree["domain"])
        data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
        return "earth" if data.get("format") in EARTH_FORMATS else "galaxy"
    return "galaxy"


ExperimentConfig = Annotated[
    Union[Annotated[GalaxyExperiment, Tag("galaxy")], Annotated[EarthExperiment, Tag("earth")]],
    Discriminator(domain_of),
]
"""The config of any experiment (validate with :func:`geocnn.config.load.validate`)."""

AnyExperiment = GalaxyExperiment | EarthExperiment
"""Type hint for a validated experiment config."""
