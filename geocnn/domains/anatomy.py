"""The anatomy of an experiment's network, a bundle's, a timm backbone's or a finished run's (logged to MLflow).

A config describes the whole GeoNet it would train: the bands and chip size its data section gives, the backbone,
the head of its task (classes from data.class_names, else a placeholder count the title states: only the data knows
them) and its transfer mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

from geocnn.config import AnyExperiment, EarthExperiment, GalaxyExperiment, load_config
from geocnn.data.sources.galaxy_tables import read_class_names
from geocnn.data.sources.raster import open_scene
from geocnn.data.store import ChipStore
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import load_bundle
from geocnn.models.anatomy import Anatomy, describe
from geocnn.models.backbones import check_backbone, create_encoder
from geocnn.models.network import GeoNet, NetSpec
from geocnn.models.start import check_model
from geocnn.models.tasks import Targets, task_spec
from geocnn.synthetic import earth as synthetic_earth
from geocnn.tracking import runs as tracking

LOG = logging.getLogger("geocnn")
PLACEHOLDER_CLASSES = 2
"""Head width of a classification config whose classes only its data knows."""
RUN_PROBE_FACTOR = 4
"""Runs probe receptive fields on inputs up to this many chip sides (one or two probes; cheap beside training)."""


def config_bands(cfg: AnyExperiment) -> tuple[int, str]:
    """Input bands of an experiment's chips, and where the count comes from (galaxy: data.bands, else
    data.channels rgb=3 / gray=1; Earth: earth.bands, else the first scene's bands (the generated scene's without
    scenes or tiles), plus the bands of earth.layers)."""
    d = cfg.data
    if isinstance(cfg, GalaxyExperiment):
        if d.bands:
            return len(d.bands), f"data.bands={list(d.bands)}"
        return (1 if d.channels == "gray" else 3), f"data.channels={d.channels}"
    e = cfg.earth
    if e.bands:
        count, how = len(e.bands), f"earth.bands={list(e.bands)}"
    elif d.tiles:
        raise GeocnnError("the band count of pre-cut tiles (data.tiles) without earth.bands is known only from the "
                          "files; set earth.bands, or pass --bands")
    elif e.scenes:
        count, how = _raster_bands(e.scenes[0], "earth.scenes"), f"all bands of {e.scenes[0]}"
    else:  # neither scenes nor tiles: the scene data.format=synthetic_earth generates
        count, how = len(synthetic_earth.BANDS), f"the generated scene's bands {synthetic_earth.BANDS}"
    extra = sum(_raster_bands(p, "earth.layers") for p in e.layers)
    return count + extra, how + (f" + {extra} from earth.layers" if extra else "")


def _raster_bands(path: str, key: str) -> int:
    try:
        with open_scene(path, None, None, allow_no_crs=True) as scene:
            return scene.count
    except GeocnnError as exc:
        raise GeocnnError(f"{key}: cannot count the bands of {path} ({exc}); set earth.bands, or pass "
                          "--bands") from None


def config_net(cfg: AnyExperiment, in_chans: int) -> tuple[GeoNet, str]:
    """The (randomly initialised) GeoNet a config trains, and a phrase describing its head: the task's head on
    data.targets (a task with a fixed tree takes its columns; none given: one placeholder target) and the classes
    data.class_names names (else a stated placeholder count). An Earth two-stage config trains stage 1's CNN on
    night lights (as :func:`geocnn.domains.earth.stage1_plan`)."""
    model = cfg.model
    task, names = model.task, list(cfg.data.targets)
    classes, source = _config_classes(cfg)
    stage = ""
    if isinstance(cfg, EarthExperiment) and cfg.two_stage.enabled:
        e = cfg.earth
        task, names, stage = ("classification" if e.label_classes else "regression"), [e.label_name], "stage 1: "
        classes, source = [f"class{i}" for i in range(e.n_label_classes)], "earth.n_label_classes"
    spec = task_spec(task)
    placeholder = not names
    if placeholder:
        tree = spec.tree(Targets([], []))
        names = list(tree.columns) if tree is not None and tree.columns else ["target"]
        placeholder = len(names) == 1
    targets = Targets(names, classes, model.sigmoid)
    spec.check_targets(targets)
    width = spec.n_outputs(targets)
    if width != spec.n_outputs(Targets(names, [], model.sigmoid)):  # the head's width is the class count
        what = f"{width} classes: {source}"
    else:
        what = f"{width} output{'' if width == 1 else 's'}" + (": a placeholder, set data.targets" if placeholder
                                                                 else "")
    net = GeoNet(NetSpec(backbone=model.backbone, in_chans=in_chans, task=task, targets=names, classes=classes,
                         dropout=model.dropout, sigmoid=model.sigmoid, tree=model.tree))
    return net, f"{stage}{task} head ({what})"


def _config_classes(cfg: AnyExperiment) -> tuple[list[str], str]:
    names = getattr(cfg.data, "class_names", None)
    if names:
        named = read_class_names(names)
        return [str(n) for n in (named.values() if isinstance(named, dict) else named)], "data.class_names"
    return [f"class{i}" for i in range(PLACEHOLDER_CLASSES)], "a placeholder, the data decides"


def describe_config(cfg: AnyExperiment, chip_size: int | None = None, bands: int | None = None,
                    transfer: str | None = None, n_blocks: int | None = None, layers: bool = False,
                    max_probe: int = 1024) -> Anatomy:
    """The anatomy of the whole network an experiment would train (its chips, backbone, head and transfer mode);
    ``chip_size``, ``bands``, ``transfer`` and ``n_blocks`` override the config's."""
    if cfg.model.backbone == "auto":
        cfg = check_model(cfg)
    check_backbone(cfg.model.backbone)
    chip = chip_size or cfg.data.chip_size
    if bands:
        in_chans, how = bands, "--bands"
    else:
        in_chans, how = config_bands(cfg)
    net, head = config_net(cfg, in_chans)
    mode = transfer or cfg.model.transfer
    blocks = cfg.model.n_blocks if n_blocks is None else n_blocks
    title = (f"{cfg.name}: {cfg.model.backbone} + {head} on {in_chans}-band {chip} x {chip} px chips "
             f"({how}; data.chip_size={cfg.data.chip_size}); model.transfer={mode}"
             + (f", model.n_blocks={blocks}" if mode == "partial" else ""))
    return describe(net, in_chans, chip, mode, blocks, layers, max_probe, title=title)


def describe_bundle(folder: str | Path, chip_size: int | None = None, transfer: str | None = None,
                    n_blocks: int = 2, layers: bool = False, max_probe: int = 1024) -> Anatomy:
    """The anatomy of an exported bundle's network on the chips it was trained on (``chip_size`` overrides)."""
    bundle = load_bundle(folder)
    pre = bundle.preprocessing
    chip = chip_size or pre.chips.out_px
    in_chans = bundle.net.spec.in_chans
    title = (f"bundle {folder}: {bundle.net.spec.backbone} + {pre.task} head on {in_chans}-band "
             f"({', '.join(pre.bands)}) {chip} x {chip} px chips" + (f"; transfer {transfer}" if transfer else ""))
    return describe(bundle.net, in_chans, chip, transfer, n_blocks, layers, max_probe, title=title)


def describe_backbone(name: str, chip_size: int = 224, bands: int = 3, transfer: str | None = None,
                      n_blocks: int = 2, layers: bool = False, max_probe: int = 1024) -> Anatomy:
    """The anatomy of a timm backbone as geocnn builds it (``num_classes=0``: pooled features, no classifier)."""
    check_backbone(name, "backbone")
    encoder = create_encoder(name, bands)
    title = (f"{name} encoder (timm, num_classes=0) on {bands}-band {chip_size} x {chip_size} px chips"
             + (f"; transfer {transfer}" + (f", n_blocks={n_blocks}" if transfer == "partial" else "")
                if transfer else ""))
    return describe(encoder, bands, chip_size, transfer, n_blocks, layers, max_probe, title=title)


def describe_target(target: str, chip_size: int | None = None, bands: int | None = None,
                    transfer: str | None = None, n_blocks: int | None = None, layers: bool = False,
                    max_probe: int = 1024, overrides: list[str] | None = None) -> Anatomy:
    """Describe a bundle folder, a config YAML or a timm backbone name (in that order of checking)."""
    path = Path(target)
    if path.is_dir():
        return describe_bundle(path, chip_size, transfer, 2 if n_blocks is None else n_blocks, layers, max_probe)
    if path.is_file() or path.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(path, overrides or [])
        return describe_config(cfg, chip_size, bands, transfer, n_blocks, layers, max_probe)
    if "/" in target or "\\" in target:
        raise GeocnnError(f"{target}: no such file or folder; give a timm model name (resnet18), an experiment YAML "
                          "or a bundle folder")
    return describe_backbone(target, chip_size or 224, bands or 3, transfer, 2 if n_blocks is None else n_blocks,
                             layers, max_probe)


def log_run_anatomy(run_id: str, net: GeoNet, store: ChipStore, cfg: AnyExperiment) -> Anatomy | None:
    """Log the trained network's anatomy on the run's chips (size and bands from the store) as
    ``model/anatomy.txt`` and ``model/anatomy.csv``; a network the measurement cannot run is logged as a note."""
    shape = [int(s) for s in store.meta["shape"]]
    in_chans, chip = shape[1], shape[-1]
    model = cfg.model
    title = (f"{cfg.name}: {model.backbone} + {net.spec.task} head trained on {in_chans}-band {chip} x {chip} px "
             f"chips; model.transfer={model.transfer}" + (f", model.n_blocks={model.n_blocks}"
                                                         if model.transfer == "partial" else ""))
    try:
        anatomy = describe(net, in_chans, chip, model.transfer, model.n_blocks,
                           max_probe=RUN_PROBE_FACTOR * chip, title=title)
    except (GeocnnError, RuntimeError, ValueError) as exc:
        LOG.warning("model anatomy not measured: %s", exc)
        tracking.log_text(run_id, f"{title}\nnot measured: {exc}\n", "model/anatomy.txt")
        return None
    tracking.log_text(run_id, anatomy.to_text(), "model/anatomy.txt")
    tracking.log_text(run_id, anatomy.to_frame().to_csv(index=False), "model/anatomy.csv")
    return anatomy

