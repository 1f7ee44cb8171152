"""The config union on the domain: each domain's own sections, cross-section checks at load, validated derivation."""

from __future__ import annotations

import pytest

from geocnn.config import EarthExperiment, GalaxyExperiment, derive, flatten, load_config
from geocnn.errors import GeocnnError

SURVEY = {"data": {"format": "survey", "catalog": "points.csv", "targets": ["wealth"], "group_column": "country"},
          "earth": {"scenes": ["scene.tif"], "chip_px": 16}}


def _error(tree: dict) -> str:
    with pytest.raises(GeocnnError) as err:
        load_config(None, base=tree)
    return str(err.value)


def test_the_data_format_picks_the_domain_and_each_domain_carries_only_its_sections() -> None:
    galaxy = load_config(None, base={"data": {"format": "zoobot"}})
    earth = load_config(None, base=SURVEY)
    assert isinstance(galaxy, GalaxyExperiment) and galaxy.domain == "galaxy"
    assert isinstance(earth, EarthExperiment) and earth.domain == "earth"
    galaxy_keys, earth_keys = set(flatten(galaxy)), set(flatten(earth))
    assert not [k for k in galaxy_keys if k.split(".")[0] in ("earth", "two_stage", "maps")]
    assert {"earth.scenes", "two_stage.enabled", "maps.stride_px"} <= earth_keys
    # a galaxy run logs no Earth parameter (it logged 31 before the union)
    assert not galaxy_keys & {k for k in earth_keys if k.startswith(("earth.", "two_stage.", "maps."))}


@pytest.mark.parametrize("section", ["earth", "two_stage", "maps"])
def test_an_earth_section_in_a_galaxy_config_is_an_error_naming_it(section: str) -> None:
    message = _error({"data": {"format": "csv"}, section: {}})
    assert f"unknown key '{section}'" in message and "belongs to Earth experiments" in message


def test_two_stage_with_a_galaxy_format_is_refused_not_ignored() -> None:
    message = _error({"data": {"format": "kaggle"}, "two_stage": {"enabled": True}})
    assert "unknown key 'two_stage'" in message


def test_earth_defaults_split_by_group_or_blocks_and_regression() -> None:
    grouped = load_config(None, base=SURVEY)
    assert grouped.split.method == "grouped" and grouped.model.task == "regression"
    blocks = load_config(None, base={**SURVEY, "data": {**SURVEY["data"], "group_column": None}})
    assert blocks.split.method == "blocks"


@pytest.mark.parametrize(("change", "words"), [
    ({"split": {"method": "random"}}, "spatially autocorrelated"),
    ({"split": {"method": "stratified"}}, "spatially autocorrelated"),
    ({"model": {"task": "classification"}}, "survey targets are continuous"),
    ({"two_stage": {"enabled": True}}, "earth.label_raster"),
    ({"earth": {"scenes": [], "chip_px": 16}}, "earth.scenes / data.tiles"),
    ({"earth": {"scenes": ["scene.tif"]}}, "earth.chip_m / earth.chip_px"),
    ({"data": {"format": "survey", "targets": ["wealth"], "tiles": "t/"}, "maps": {"enabled": True}}, "maps.enabled"),
])
def test_impossible_earth_combinations_fail_at_load_naming_the_key(change: dict, words: str) -> None:
    tree = {**SURVEY, **change}
    if "data" in change:
        tree["data"] = {**SURVEY["data"], **change["data"], "catalog": "points.csv"}
        tree["earth"] = {}
    assert words in _error(tree)


def test_maps_default_to_on_with_scenes_and_off_with_tiles_only() -> None:
    assert load_config(None, base=SURVEY).maps_enabled
    tiles = {"data": {**SURVEY["data"], "tiles": "tiles/"}}
    assert not load_config(None, base=tiles).maps_enabled


def test_an_unknown_domain_and_a_domain_that_contradicts_the_format_are_errors() -> None:
    assert "'moon' is not a domain" in _error({"domain": "moon"})
    assert "key 'data.format'" in _error({"domain": "earth", "data": {"format": "csv"}})


def test_derive_validates_the_result() -> None:
    cfg = load_config(None, base={"data": {"format": "csv"}})
    changed = derive(cfg, {"train.epochs": 3, "data.targets": ["a"]})
    assert changed.train.epochs == 3 and changed.data.targets == ["a"] and cfg.train.epochs == 20
    with pytest.raises(GeocnnError, match="train.epochs"):
        derive(cfg, {"train.epochs": 0})
    earth = load_config(None, base=SURVEY)
    with pytest.raises(GeocnnError, match="spatially autocorrelated"):
        derive(earth, {"split.method": "random"})
