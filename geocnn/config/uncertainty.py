"""The uncertainty section: calibration, conformal intervals and sets, bootstrap intervals of test metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from geocnn.config.common import Strict


class UncertaintyConfig(Strict):
    """How honest error bars are made: conformal prediction on held-out rows, temperature scaling, the bootstrap."""

    enabled: bool = Field(True, description="Calibrate and attach intervals/sets to every prediction (tables, maps, "
                          "bundle); off: bare predictions as before.")
    level: float = Field(0.9, description="Nominal coverage of prediction intervals (regression, vote fractions) "
                         "and prediction sets (classes), strictly between 0 and 1.")
    mondrian: Literal["none", "group", "urban", "class"] = Field(
        "none", description="Conformal quantiles per category (Mondrian): none (one quantile), group (the split "
        "group, e.g. country: rows of a group never calibrated fall back to the pooled quantile), urban "
        "(urban/rural), class (the predicted class; classification).")
    normalise: Literal["none", "tta_spread"] = Field(
        "none", description="Difficulty estimate scaling each interval: none (one width per category). tta_spread "
        "(the spread of the test-time views) is refused: maps, predict and watch do not compute it yet.")
    temperature: bool = Field(True, description="Classification: fit a temperature on the validation split "
                              "(never test) and report expected calibration error before/after on test.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of the held-out rows for 95 % intervals "
                           "of every test metric (clusters resampled by group when the split is grouped); 0: off.")
    bootstrap_level: float = Field(0.95, description="Confidence level of the bootstrap intervals.")
    review: int = Field(24, ge=0, description="Galaxies: how many of the least certain test/unlabelled galaxies to "
                        "rank in review.csv and its montage (what to look at next); 0: off.")

    @field_validator("normalise")
    @classmethod
    def _no_spread(cls, value: str) -> str:
        if value == "tta_spread":
            raise ValueError("uncertainty.normalise=tta_spread is not supported: the spread of the test-time views is "
                             "not computed by training, predict, map or watch, so the bundle's intervals could not be "
                             "applied; use uncertainty.normalise: none (or uncertainty.mondrian: group/urban for "
                             "widths that differ by category)")
        return value

    @field_validator("level", "bootstrap_level")
    @classmethod
    def _open_unit(cls, value: float, info) -> float:  # noqa: ANN001
        if not 0.0 < value < 1.0:
            raise ValueError(f"uncertainty.{info.field_name}={value}: a coverage level is a probability strictly "
                             "between 0 and 1 (e.g. 0.9 for 90 % intervals)")
        return value
