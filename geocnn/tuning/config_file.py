"""The chosen configuration as YAML ready to commit: the original file with the searched keys set (its comments
kept), a header saying how the values were chosen."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from geocnn.atomic import atomic_path
from geocnn.config import AnyExperiment, apply_overrides, flatten

MARK = "# Chosen on validation by `geocnn tune`"


def _set(tree: Any, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = CommentedMap()
        node = node[part]
    node[parts[-1]] = value


def write_tuned_config(path: Path, cfg: AnyExperiment, changes: dict[str, Any], header: list[str],
                       source: Path | None = None, overrides: list[str] | None = None) -> Path:
    """Write the config with ``changes`` applied to ``path`` (atomically).

    From ``source`` (the YAML the study ran, with its --set ``overrides``): the same file, comments and ${ENV}
    references kept, the searched keys set. Without a source: the validated config's non-default keys.
    """
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 120
    if source is not None and Path(source).exists():
        tree = rt.load(Path(source).read_text()) or CommentedMap()
        plain = apply_overrides({}, list(overrides or []))
        for key, value in flatten(plain).items():
            _set(tree, key, value)
    else:
        tree = CommentedMap(cfg.model_dump(mode="json", exclude_defaults=True))
    for key, value in changes.items():
        _set(tree, key, value)
    buf = io.StringIO()
    rt.dump(tree, buf)
    body = buf.getvalue()
    lines = body.splitlines(keepends=True)
    if lines and lines[0].startswith(MARK):  # a config written by an earlier study: replace its header
        while lines and lines[0].startswith("#"):
            lines.pop(0)
    text = "".join(f"# {h}\n" if i else f"{MARK}" + h.removeprefix("Chosen on validation by `geocnn tune`") + "\n"
                   for i, h in enumerate(header)) + "".join(lines)
    yaml.safe_load(text)  # what is written parses
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path

