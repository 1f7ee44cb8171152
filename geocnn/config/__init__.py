"""Experiment configuration: pydantic sections (typos are errors), a union on the domain, YAML loading."""

from geocnn.config.common import (
                                  AugmentConfig,
                                  ModelConfig,
                                  OptimConfig,
                                  OrchestrationConfig,
                                  ScheduleConfig,
                                  SplitConfig,
                                  Strict,
                                  TrackingConfig,
                                  TrainConfig,
                                  metric_direction,
)
from geocnn.config.earth import EARTH_FORMATS, EarthConfig, EarthData, MapsConfig, TwoStageConfig
from geocnn.config.experiment import (
                                  AnyExperiment,
                                  EarthExperiment,
                                  ExperimentBase,
                                  ExperimentConfig,
                                  GalaxyExperiment,
                                  domain_of,
)
from geocnn.config.galaxy import GALAXY_FORMATS, GalaxyData
from geocnn.config.load import (
                                  DATA_ENV,
                                  apply_overrides,
                                  derive,
                                  expand_env,
                                  expand_tree,
                                  flatten,
                                  load_config,
                                  shared_data_default,
                                  validate,
)
from geocnn.config.pretrain import PretrainConfig, ViewsConfig
from geocnn.config.tune import Dimension, TuneConfig
from geocnn.config.uncertainty import UncertaintyConfig

__all__ = ["AnyExperiment", "AugmentConfig", "DATA_ENV", "EARTH_FORMATS", "EarthConfig", "EarthData",
           "EarthExperiment", "ExperimentBase", "ExperimentConfig", "GALAXY_FORMATS", "GalaxyData",
           "GalaxyExperiment", "MapsConfig", "ModelConfig", "OptimConfig", "OrchestrationConfig", "PretrainConfig",
           "ScheduleConfig", "SplitConfig", "Strict", "ViewsConfig",
           "TrackingConfig", "TrainConfig", "TuneConfig", "Dimension", "TwoStageConfig", "UncertaintyConfig",
           "apply_overrides", "derive", "domain_of", "expand_env",
           "expand_tree", "flatten", "load_config", "metric_direction", "shared_data_default", "validate"]
