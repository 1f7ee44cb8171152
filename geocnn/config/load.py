"""Loading configs: YAML, ${ENV} expansion, dotted --set overrides, validation with errors that name the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from geocnn.config.experiment import EARTH_SECTIONS, AnyExperiment, ExperimentConfig
from geocnn.config.tune import flatten_mapping
from geocnn.errors import GeocnnError

DATA_ENV = "GEOCNN_SHARED_DATA"
"""Environment variable pointing at the real sample data; defaults to ../shared/data beside the project."""

_ADAPTER: TypeAdapter[AnyExperiment] = TypeAdapter(ExperimentConfig)

_ENV = re.compile(r"\$\{(\w+)(?::-([^${}]*))?\}")


def shared_data_default() -> str:
    """Default of ${GEOCNN_SHARED_DATA}: ../shared/data beside the project root."""
    return str((Path(__file__).resolve().parents[3] / "shared" / "data"))


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (defaults may nest); GEOCNN_SHARED_DATA defaults to ../shared/data."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name == DATA_ENV and default is None:
            default = shared_data_default()
        value = os.environ.get(name, default)
        if value is None:
            raise GeocnnError(f"environment variable ${{{name}}} used in the config is not set; set it or write "
                              f"${{{name}:-default}}")
        return value

    while True:  # innermost first, so ${A:-${B}} works
        expanded = _ENV.sub(sub, text)
        if expanded == text:
            return expanded
        text = expanded


def expand_tree(node: Any) -> Any:
    """Expand ``${VAR}`` in every string of a parsed YAML tree (after parsing, so values cannot break YAML)."""
    if isinstance(node, dict):
        return {k: expand_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_tree(v) for v in node]
    return expand_env(node) if isinstance(node, str) else node


def _parse_value(raw: str) -> Any:
    return expand_tree(yaml.safe_load(raw)) if raw != "" else ""


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise GeocnnError(f"override {item!r} must look like key.sub=value (e.g. train.epochs=5)")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            nxt = node[p]
            if not isinstance(nxt, dict):
                raise GeocnnError(f"override {item!r}: '{p}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return tree


def _format_validation(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        domain = loc.pop(0) if loc and loc[0] in ("galaxy", "earth") else None
        key = ".".join(loc)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            if domain == "galaxy" and loc and loc[0] in EARTH_SECTIONS:
                lines.append(f"unknown key '{key}': the '{loc[0]}' section belongs to Earth experiments "
                             "(data.format survey or synthetic_earth); remove it from this galaxy config")
            else:
                lines.append(f"unknown key '{key}' (a typo? see the config reference in README.md)")
        elif e["type"] == "union_tag_invalid":
            lines.append(f"key 'domain': {e['input'].get('domain')!r} is not a domain; use galaxy or earth (or leave "
                         "it out: data.format decides)")
        elif not key:
            lines.extend(msg.split("\n"))
        else:
            lines.append(f"key '{key}': {msg}")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


def validate(tree: dict[str, Any], source: str = "config") -> AnyExperiment:
    """Validate a config tree into a galaxy or Earth experiment; errors name every bad key."""
    try:
        return _ADAPTER.validate_python(tree)
    except ValidationError as err:
        raise GeocnnError(_format_validation(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> AnyExperiment:
    """Load a YAML config (or ``base``), expand ``${ENV}``, apply dotted overrides, validate."""
    tree: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise GeocnnError(f"config file {p} does not exist; see configs/ for examples")
        try:
            loaded = expand_tree(yaml.safe_load(p.read_text()))
        except yaml.YAMLError as exc:
            raise GeocnnError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise GeocnnError(f"{p}: the top level must be a mapping of keys (name:, data:, model:, ...)")
        tree.update(loaded)
    tree = apply_overrides(tree, overrides or [])
    return validate(tree, source)


def derive(cfg: AnyExperiment, changes: dict[str, Any]) -> AnyExperiment:
    """A new config with dotted-key ``changes`` applied, validated like a loaded one (never rewritten unchecked)."""
    tree = cfg.model_dump()
    for key, value in changes.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return validate(tree, f"config {cfg.name!r} (derived: {', '.join(changes)})")


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a config into ``a.b.c -> value`` pairs (for MLflow params)."""
    return flatten_mapping(cfg.model_dump() if isinstance(cfg, BaseModel) else cfg, prefix)
