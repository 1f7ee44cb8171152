"""Galaxy readers: Kaggle Galaxy Zoo, GZ DECaLS/Zoobot, class folders and generic CSV/Parquet catalogs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.data.catalog import ID, IMAGE, Catalog, require_columns, validate_ids, validate_targets
from geocnn.config import DataConfig
from geocnn.errors import GeocnnError
from geocnn.data.schema import KAGGLE_TREE

TASKS = ("classification", "regression", "vote_fractions", "vote_counts")
"""The model tasks that decide how targets are validated and encoded."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".fits")
"""Image file types found by id or in class folders (case-insensitive), in order of preference."""

FITS_SUFFIXES = (".fits", ".fit", ".fts")
"""Suffixes read with astropy instead of PIL."""

GROUP = "group"
"""Catalog column holding the optional group (for grouped splits)."""

KAGGLE_ID = "GalaxyID"
KAGGLE_IMAGE_DIR = "images_training_rev1"
ZOOBOT_ID_COLUMNS = ("id_str", "iauname")
ZOOBOT_FILE_COLUMNS = ("file_loc", "file", "png_loc", "local_png_loc")
FOLDER_LABEL = "label"

_FRACTION_HINT = (
    " Galaxy Zoo leaves a vote fraction empty where the question was not asked of that galaxy: pick questions "
    "asked of every galaxy, or train on the vote counts with model.task=vote_counts (empty counts = 0 votes)."
)


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------


def read_galaxy_catalog(data: DataConfig, task: str) -> Catalog:
    """Read the galaxy catalog described by ``data`` and validate/encode its targets for ``task``.

    Args:
        data: the ``data`` section of the config; ``data.format`` picks the reader (kaggle, zoobot, folders, csv).
        task: ``model.task``: classification, regression, vote_fractions or vote_counts.

    Returns:
        A Catalog with absolute image paths that all exist, unique string ids, float64 targets, or for
        classification one int64 column of class codes 0..K-1 with ``classes`` naming them.

    Raises:
        GeocnnError: on any problem with the config, the catalog file, its columns, rows or images.
    """
    if task not in TASKS:
        raise GeocnnError(f"model.task {task!r} is not one of {list(TASKS)}.")
    fmt = data.format
    images = Path(data.images).expanduser() if data.images else None
    targets = list(data.targets) or None
    if fmt == "synthetic":
        raise GeocnnError("data.format 'synthetic' is generated, not read from files; the galaxy readers handle "
                          "kaggle, zoobot, folders and csv. Use the synthetic generator, or change data.format.")
    if fmt == "folders":
        if task != "classification":
            raise GeocnnError(f"data.format 'folders' gives class labels (one subfolder per class), but model.task is "
                              f"{task!r}. Set model.task=classification, or use a csv catalog with numeric targets.")
        if targets not in (None, [FOLDER_LABEL]):
            raise GeocnnError(f"data.format 'folders' has a single target '{FOLDER_LABEL}' (the subfolder name); "
                              f"data.targets is {targets}. Remove data.targets or set it to ['{FOLDER_LABEL}'].")
        if images is None:
            raise GeocnnError("data.format 'folders' needs data.images: the folder holding one subfolder per class.")
        catalog = read_folders(images)
    else:
        if not data.catalog:
            raise GeocnnError(f"data.format {fmt!r} needs data.catalog: the path of the catalog file (CSV/Parquet).")
        path = Path(data.catalog).expanduser()
        if fmt == "kaggle":
            catalog = read_kaggle(path, images, targets, id_column=data.id_column or KAGGLE_ID,
                                  group_column=data.group_column, allow_outside_root=data.allow_outside_root)
        elif fmt == "zoobot":
            catalog = read_zoobot(path, images, targets, id_column=data.id_column, file_column=data.file_column,
                                  group_column=data.group_column, allow_outside_root=data.allow_outside_root)
        elif fmt == "csv":
            file_column: str | None = data.file_column
            if file_column is None and "file" in _read_header(path):
                file_column = "file"
            catalog = read_csv_catalog(path, images, id_column=data.id_column or "id", file_column=file_column,
                                       targets=targets, group_column=data.group_column,
                                       allow_outside_root=data.allow_outside_root)
        else:  # pragma: no cover - DataConfig's Literal forbids it
            raise GeocnnError(f"data.format {fmt!r} is not one of kaggle, zoobot, folders, csv, synthetic.")
    return prepare_targets(catalog, task)


def prepare_targets(catalog: Catalog, task: str) -> Catalog:
    """Validate and encode a catalog's targets for a task (see :func:`read_galaxy_catalog`).

    Args:
        catalog: a catalog from one of the readers (targets still as read).
        task: classification, regression, vote_fractions or vote_counts.

    Returns:
        A new Catalog: float64 targets, or one int64 class-code column and ``classes`` for classification.

    Raises:
        GeocnnError: naming the file, row and column of the first bad value.
    """
    if task not in TASKS:
        raise GeocnnError(f"model.task {task!r} is not one of {list(TASKS)}.")
    frame = catalog.frame.copy()
    source = catalog.source
    if not catalog.targets:
        raise GeocnnError(f"{source}: no target columns; set data.targets to the column(s) to learn.")
    if task == "classification":
        if len(catalog.targets) != 1:
            raise GeocnnError(
                f"{source}: classification needs exactly one target column (the class label), but data.targets "
                f"names {len(catalog.targets)}: {catalog.targets}. Set data.targets to one column, or use "
                "model.task=regression / vote_fractions / vote_counts for several.")
        col = catalog.targets[0]
        if catalog.classes and pd.api.types.is_integer_dtype(frame[col]):
            codes = frame[col].to_numpy()
            if len(codes) and (codes.min() < 0 or codes.max() >= len(catalog.classes)):
                raise GeocnnError(f"{source}: class codes in column '{col}' lie outside 0..{len(catalog.classes) - 1}.")
            frame[col] = frame[col].astype("int64")
            classes = list(catalog.classes)
        else:
            frame[col], classes = encode_classes(frame[col], source, col)
        return Catalog(frame=frame, targets=list(catalog.targets), source=source, classes=classes)
    if task == "vote_counts":
        for col in catalog.targets:
            # Galaxy Zoo leaves counts empty where the question was not asked: that is 0 votes.
            if not pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = frame[col].where(~_blank(frame[col]), np.nan)
            frame[col] = frame[col].where(frame[col].notna(), 0)
    try:
        validate_targets(frame, catalog.targets, source, fractions=task == "vote_fractions",
                         counts=task == "vote_counts")
    except GeocnnError as exc:
        if task == "vote_fractions" and "missing, NaN" in str(exc):
            raise GeocnnError(str(exc) + _FRACTION_HINT) from None
        raise
    for col in catalog.targets:
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
        if task == "regression" and len(frame) > 1 and frame[col].nunique() == 1:
            raise GeocnnError(f"{source}: column '{col}' is constant ({frame[col].iloc[0]:g} in all {len(frame)} "
                              "rows); there is nothing to learn. Check the column, or choose another target in "
                              "data.targets.")
    return Catalog(frame=frame, targets=list(catalog.targets), source=source, classes=[])


def encode_classes(values: pd.Series, source: str, column: str) -> tuple[pd.Series, list[str]]:
    """Encode class labels as int64 codes 0..K-1 in sorted order (numbers numerically, else as text).

    Args:
        values: the label column.
        source: file named in errors.
        column: column named in errors.

    Returns:
        The int64 codes (same index) and the class names as strings (index = code).

    Raises:
        GeocnnError: on a missing label, non-integer numeric labels or fewer than 2 classes.
    """
    missing = values.isna() | _blank(values)
    if missing.any():
        i = int(missing.to_numpy().nonzero()[0][0])
        raise GeocnnError(f"{source}: row {i + 2}, column '{column}': the class label is missing. "
                          "Fill it or drop the row.")
    if pd.api.types.is_bool_dtype(values):
        keys = values.astype(str)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        keys = numbers if numbers.notna().all() else values.astype(str)
    if pd.api.types.is_numeric_dtype(keys):
        floats = keys.to_numpy(dtype=float)
        frac = ~np.isfinite(floats) | (floats != np.round(floats))
        if frac.any():
            i = int(frac.nonzero()[0][0])
            raise GeocnnError(
                f"{source}: row {i + 2}, column '{column}': value {_plain(values.iloc[i])!r} is not a class label "
                "(it is a non-integer number). Classification needs labels; use model.task=regression or "
                "vote_fractions for continuous targets.")
        keys = pd.Series(floats.astype(np.int64), index=values.index)
    distinct = sorted(pd.unique(keys))
    if len(distinct) < 2:
        only = ", ".join(map(str, distinct)) or "none"
        raise GeocnnError(f"{source}: column '{column}' holds a single class ({only}); classification needs at "
                          "least 2 classes. Add samples of other classes or choose another target column.")
    lookup = {k: i for i, k in enumerate(distinct)}
    codes = keys.map(lookup).astype("int64")
    return codes, [str(k) for k in distinct]


# --------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------


def read_kaggle(catalog: Path, images: Path | None = None, targets: list[str] | None = None, *,
                allow_outside_root: bool = False,
                id_column: str = KAGGLE_ID, group_column: str | None = None) -> Catalog:
    """Read a Kaggle "Galaxy Zoo - The Galaxy Challenge" catalog (``GalaxyID`` + Class1.1..Class11.6).

    Args:
        catalog: ``training_solutions_rev1.csv`` or a file of the same layout.
        images: folder of ``<GalaxyID>.jpg``; default ``images_training_rev1`` beside the CSV if it exists,
            else the CSV's folder. Images elsewhere under it are found by id.
        targets: target columns; default all 37 (``KAGGLE_TREE.columns``).
        id_column: the id column.
        group_column: optional column kept as ``group``.

    Returns:
        A Catalog with float64 vote-fraction targets (checked numeric and finite).

    Raises:
        GeocnnError: on a missing file, empty catalog, absent column, duplicate id, bad value or missing image.
    """
    catalog = Path(catalog)
    if images is None:
        beside = catalog.parent / KAGGLE_IMAGE_DIR
        images = beside if beside.is_dir() else catalog.parent
    targets = list(targets) if targets else list(KAGGLE_TREE.columns)
    cat = _table_catalog(catalog, images, id_column=id_column, id_candidates=(), file_column=None,
                         file_candidates=(), targets=targets, group_column=group_column,
                         templates=("{id}.jpg",), allow_outside_root=allow_outside_root)
    validate_targets(cat.frame, cat.targets, cat.source)
    for col in cat.targets:
        cat.frame[col] = pd.to_numeric(cat.frame[col]).astype("float64")
    return cat


def read_zoobot(catalog: Path, images: Path | None = None, targets: list[str] | None = None, *,
                allow_outside_root: bool = False,
                id_column: str | None = None, file_column: str | None = None,
                group_column: str | None = None) -> Catalog:
    """Read a GZ DECaLS / Zoobot catalog (``id_str`` or ``iauname`` ids, optional file column, vote columns).

    Relative file paths resolve against ``images``; a file that is not there (e.g. the published
    ``png_loc`` ``dr5/J081/<id>.png`` when the images were unpacked into ``gz_decals_dr5_png_part1/J081/``),
    or a catalog without a file column, is found by name (``<id>.png/.jpg/.jpeg/.fits``) anywhere under
    ``images``.

    Args:
        catalog: CSV or Parquet catalog.
        images: image root; default the catalog's folder.
        targets: target columns (required unless ``require_targets`` is False, as for prediction).
        id_column: id column; default the first of ``id_str``, ``iauname`` present.
        file_column: image path column; default the first of ``file_loc``, ``file``, ``png_loc``,
            ``local_png_loc`` present, else none (images found by id).
        group_column: optional column kept as ``group``.

    Returns:
        A Catalog with targets as read (see :func:`prepare_targets`).

    Raises:
        GeocnnError: on a missing file, empty catalog, absent column, duplicate id or missing image.
    """
    return _table_catalog(Path(catalog), images, id_column=id_column, id_candidates=ZOOBOT_ID_COLUMNS,
                          file_column=file_column, file_candidates=ZOOBOT_FILE_COLUMNS, targets=targets,
                          group_column=group_column)


def read_csv_catalog(catalog: Path, images: Path | None = None, id_column: str = "id",
                     file_column: str | None = "file", targets: list[str] | None = None, *,
                     group_column: str | None = None, require_targets: bool = True,
                     allow_outside_root: bool = False) -> Catalog:
    """Read any CSV or Parquet catalog with an id column, an image path column and target columns.

    Args:
        catalog: CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet (``.parquet``, ``.pq``) file.
        images: folder that relative paths resolve against; default the catalog's folder.
        id_column: id column.
        file_column: image path column; None finds ``<id>.png/.jpg/.jpeg/.fits`` under ``images``.
        targets: target columns (required unless ``require_targets`` is False, as for prediction).
        group_column: optional column kept as ``group``.

    Returns:
        A Catalog with targets as read (see :func:`prepare_targets`).

    Raises:
        GeocnnError: on a missing file, empty catalog, absent column, duplicate id or missing image.
    """
    return _table_catalog(Path(catalog), images, id_column=id_column, id_candidates=(), file_column=file_column,
                          file_candidates=(), targets=targets, group_column=group_column,
                          require_targets=require_targets, allow_outside_root=allow_outside_root)


def read_folders(root: Path) -> Catalog:
    """Read an image-folder dataset: one subfolder per class, images (jpg/jpeg/png/fits) inside.

    Args:
        root: folder holding the class subfolders (hidden folders are ignored; images may be nested).

    Returns:
        A Catalog with int64 codes in column ``label``, ``classes`` = the sorted folder names (numbers sorted
        numerically) and ids ``<class>/<file stem>``.

    Raises:
        GeocnnError: if the folder is missing, has no class subfolders, a class folder has no images,
            there are fewer than 2 classes, or two files would get the same id.
    """
    root = Path(root)
    if not root.is_dir():
        raise GeocnnError(f"{root}: image folder (data.images) does not exist or is not a folder. Point data.images "
                          "at a folder with one subfolder per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise GeocnnError(f"{root}: no class subfolders found. data.format 'folders' expects one subfolder per class "
                          "(e.g. spiral/, elliptical/) with the images inside.")
    ids: list[str] = []
    files: list[str] = []
    labels: list[str] = []
    seen: dict[str, Path] = {}
    for class_dir in class_dirs:
        found = _walk_images(class_dir)
        if not found:
            raise GeocnnError(f"{class_dir}: class folder contains no images ({', '.join(IMAGE_SUFFIXES)}, any case). "
                              "Add images or remove the folder.")
        for path in found:
            rel = path.relative_to(class_dir).with_suffix("").as_posix()
            sample_id = f"{class_dir.name}/{rel}"
            if sample_id in seen:
                raise GeocnnError(f"{path} and {seen[sample_id]} would both get id {sample_id!r}; ids must be "
                                  "unique. Rename or remove one of them.")
            seen[sample_id] = path
            ids.append(sample_id)
            files.append(os.path.abspath(path))
            labels.append(class_dir.name)
    if len(class_dirs) < 2:
        raise GeocnnError(f"{root}: only one class subfolder ({class_dirs[0].name}/); classification needs at least "
                          "2 classes. Add a subfolder per class.")
    frame = pd.DataFrame({ID: pd.Series(ids, dtype=str), IMAGE: pd.Series(files, dtype=str), FOLDER_LABEL: labels})
    frame[FOLDER_LABEL], classes = encode_classes(frame[FOLDER_LABEL].astype(str), str(root), FOLDER_LABEL)
    return Catalog(frame=frame, targets=[FOLDER_LABEL], source=str(root), classes=classes)


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------


def find_image_files(root: Path) -> dict[str, Path]:
    """Index every image under ``root`` by file stem, with one walk of the tree.

    Args:
        root: folder to search (recursively; hidden files and folders are skipped).

    Returns:
        ``{stem: path}`` for .png/.jpg/.jpeg/.fits files (any case). When a stem occurs more than once the
        path chosen is deterministic: the preferred suffix (in ``IMAGE_SUFFIXES`` order), then the first path
        in sorted order.
    """
    index: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for path in _walk_images(Path(root)):
        stem = path.stem
        old = index.get(stem)
        if old is None or rank[path.suffix.lower()] < rank[old.suffix.lower()]:
            index[stem] = path
    return index


def load_image(path: Path, channels: str = "rgb") -> np.ndarray:
    """Read an image as a (C, H, W) array.

    JPEG/PNG (and other PIL formats) are converted to RGB (C=3) or grayscale (C=1) uint8. FITS files
    (needs the ``fits`` extra: astropy) give float32 from the first HDU with data: a 2-D image is one band,
    a 3-D cube is taken as bands-first; with ``channels="gray"`` several bands are averaged to one.

    Args:
        path: image file.
        channels: ``"rgb"`` or ``"gray"``.

    Returns:
        The image array, (C, H, W).

    Raises:
        GeocnnError: if the file is missing, corrupt, truncated or not an image, or astropy is missing for FITS.
    """
    path = Path(path)
    if channels not in ("rgb", "gray"):
        raise GeocnnError(f"channels must be 'rgb' or 'gray' (data.channels), not {channels!r}.")
    if not path.is_file():
        raise GeocnnError(f"{path}: image file does not exist. Fix the path in the catalog or data.images.")
    if path.suffix.lower() in FITS_SUFFIXES:
        return _load_fits(path, channels)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here and not later
            if img.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the top 8 bits, not a clipped copy
                gray = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
                arr = gray if channels == "gray" else np.repeat(gray[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(img.convert("RGB" if channels == "rgb" else "L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise GeocnnError(f"{path}: corrupt or not an image ({exc}). Replace the file with a valid JPEG/PNG/FITS "
                          "image or remove its row from the catalog.") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _load_fits(path: Path, channels: str) -> np.ndarray:
    try:
        from astropy.io import fits
    except ImportError:
        raise GeocnnError(f"{path}: reading FITS images needs astropy: pip install 'geocnn[fits]'.") from None
    try:
        with fits.open(path, memmap=False) as hdul:
            data = next((h.data for h in hdul if getattr(h, "data", None) is not None and h.data.ndim >= 2), None)
            if data is None:
                raise GeocnnError(f"{path}: FITS file holds no image data (no HDU with a 2-D or 3-D array). "
                                  "Replace the file or remove its row.")
            arr = np.asarray(data, dtype=np.float32)
    except GeocnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for damaged files
        raise GeocnnError(f"{path}: corrupt or not a FITS image ({exc}). Replace the file or remove its row.") from None
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise GeocnnError(f"{path}: FITS image has {arr.ndim} dimensions; expected 2 (one band) or 3 (bands-first).")
    if channels == "gray" and arr.shape[0] > 1:
        arr = arr.mean(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------------------


def _walk_images(root: Path) -> list[Path]:
    """All image files under ``root`` (one os.walk, sorted, hidden entries skipped)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
    return out


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _blank(values: pd.Series) -> pd.Series:
    """True where a text cell is empty or whitespace."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _check_catalog_file(path: Path) -> None:
    if not path.exists():
        raise GeocnnError(f"{path}: catalog file does not exist. Fix data.catalog (relative paths are relative to "
                          "the working directory).")
    if path.is_dir():
        raise GeocnnError(f"{path}: data.catalog is a folder, not a catalog file (CSV/Parquet). For one subfolder "
                          "per class use data.format=folders with data.images.")


def _read_header(path: Path) -> list[str]:
    """Column names of a catalog file."""
    _check_catalog_file(path)
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, nrows=0, sep=_sep(path)).columns]
    except pd.errors.EmptyDataError:
        raise GeocnnError(f"{path}: the catalog file is empty (no header, no rows). Point data.catalog at a "
                          "catalog with a header line and samples.") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise GeocnnError(f"{path}: cannot read the catalog ({exc}). It must be a CSV with a header line or a "
                          "Parquet file.") from None


def _sep(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _read_table(path: Path, text_columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV/Parquet catalog, the given columns as text (so ids keep leading zeros)."""
    _check_catalog_file(path)
    try:
        if _is_parquet(path):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=_sep(path), dtype={c: str for c in text_columns})
    except pd.errors.EmptyDataError:
        raise GeocnnError(f"{path}: the catalog file is empty (no header, no rows). Point data.catalog at a "
                          "catalog with a header line and samples.") from None
    except Exception as exc:  # noqa: BLE001
        raise GeocnnError(f"{path}: cannot read the catalog ({exc}). It must be a CSV with a header line or a "
                          "Parquet file.") from None
    return frame.reset_index(drop=True)


def _ids_as_text(values: pd.Series) -> pd.Series:
    """Ids as strings; integer-valued floats (Parquet/NaN-promoted) lose their '.0'."""
    if pd.api.types.is_float_dtype(values):
        floats = values.to_numpy(dtype=float)
        ok = np.isfinite(floats) & (floats == np.round(floats))
        out = [str(int(v)) if good else (None if v != v else str(v)) for v, good in zip(floats, ok)]
        return pd.Series(out, index=values.index, dtype=object)
    return values.map(lambda v: v if v is None or (isinstance(v, float) and v != v) else str(v))


def _table_catalog(path: Path, images: Path | str | None, *, id_column: str | None, id_candidates: Sequence[str],
                   file_column: str | None, file_candidates: Sequence[str], targets: list[str] | None,
                   group_column: str | None, templates: Sequence[str] = (),
                   require_targets: bool = True, allow_outside_root: bool = False) -> Catalog:
    """Shared body of the table readers: columns, ids, image paths (with the by-name fallback), targets."""
    source = str(path)
    header = _read_header(path)
    header_frame = pd.DataFrame(columns=header)
    if id_column is None:
        id_column = next((c for c in id_candidates if c in header), None)
        if id_column is None:
            raise GeocnnError(f"{source}: no id column found (looked for {list(id_candidates)}). Set data.id_column "
                              f"to the id column. Available columns: {', '.join(header[:40])}.")
    require_columns(header_frame, [id_column], source, "data.id_column")
    if file_column is None:
        file_column = next((c for c in file_candidates if c in header), None)
    elif file_column not in header:
        require_columns(header_frame, [file_column], source, "data.file_column")
    if not targets and require_targets:
        raise GeocnnError(f"{source}: no target columns: set data.targets to the column(s) to learn. "
                          f"Available columns: {', '.join(header[:40])}{', ...' if len(header) > 40 else ''}.")
    targets = list(targets or [])
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise GeocnnError(f"{source}: data.targets names {dupes} more than once; list each column once.")
    clash = [t for t in targets if t in (ID, IMAGE, GROUP)]
    if clash:
        raise GeocnnError(f"{source}: target column(s) {clash} clash with the catalog's own columns "
                          f"({ID}, {IMAGE}, {GROUP}); rename them in the file.")
    require_columns(header_frame, targets, source, "data.targets")
    if group_column is not None:
        require_columns(header_frame, [group_column], source, "data.group_column")

    text_columns = [id_column] + ([file_column] if file_column else []) + ([group_column] if group_column else [])
    raw = _read_table(path, text_columns)
    if len(raw) == 0:
        raise GeocnnError(f"{source}: the catalog is empty (a header but no rows). Point data.catalog at a "
                          "catalog with samples.")

    ids = _ids_as_text(raw[id_column])
    missing_id = ids.isna() | _blank(ids.fillna(""))
    if missing_id.any():
        i = int(missing_id.to_numpy().nonzero()[0][0])
        raise GeocnnError(f"{source}: row {i + 2}, column '{id_column}': the id is missing. Every row needs a "
                          "unique id; fill it or drop the row.")
    ids = ids.astype(str)

    root = _image_root(path, images)
    files = raw[file_column] if file_column else None
    image_paths = _resolve_images(ids, files, file_column, root, path.parent, templates, source, allow_outside_root)

    frame = pd.DataFrame({ID: ids.to_numpy(dtype=object), IMAGE: image_paths})
    frame[ID] = frame[ID].astype(str)
    frame[IMAGE] = frame[IMAGE].astype(str)
    validate_ids(frame, source)
    for col in targets:
        frame[col] = raw[col].to_numpy()
    if group_column is not None:
        groups = raw[group_column]
        bad = groups.isna() | _blank(groups.fillna(""))
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise GeocnnError(f"{source}: row {i + 2}, column '{group_column}' (data.group_column): the group is "
                              "missing. Fill it or drop the row.")
        frame[GROUP] = _ids_as_text(groups).astype(str).to_numpy()
    return Catalog(frame=frame, targets=targets, source=source, classes=[])


def _image_root(catalog: Path, images: Path | str | None) -> Path:
    if images is None:
        return catalog.parent
    root = Path(images).expanduser()
    if not root.is_dir():
        raise GeocnnError(f"{root}: image folder (data.images) does not exist or is not a folder. Fix data.images "
                          f"or leave it out to use the catalog's folder ({catalog.parent}).")
    return root


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots``."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(r)) for r in roots)


def _resolve_images(ids: pd.Series, files: pd.Series | None, file_column: str | None, root: Path, catalog_dir: Path,
                    templates: Sequence[str], source: str, allow_outside_root: bool = False) -> list[str]:
    """Absolute path of every row's image: the file column (against ``root``, then the catalog folder),
    the templates, else a by-name lookup in one index of ``root``; every path is checked to exist and, unless
    allowed, to lie inside ``root`` or the catalog folder (symlinks resolved)."""
    bases = [root] if root.resolve() == catalog_dir.resolve() else [root, catalog_dir]
    index: dict[str, Path] | None = None
    out: list[str] = []
    missing: list[tuple[int, str]] = []
    for i, sample_id in enumerate(ids.tolist()):
        tried: list[Path] = []
        value = files.iloc[i] if files is not None else None
        names: list[str] = []
        if isinstance(value, str) and value.strip():
            rel = Path(value.strip()).expanduser()
            tried += [rel] if rel.is_absolute() else [b / rel for b in bases]
            names.append(rel.stem)
        tried += [root / t.format(id=sample_id) for t in templates]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            if index is None:
                index = find_image_files(root)
            names.append(sample_id)
            found = next((index[n] for n in names if n in index), None)
        if found is None:
            if files is not None and not (isinstance(value, str) and value.strip()):
                what = f"the file in column '{file_column}' is empty"
            else:
                what = "tried " + ", ".join(str(p) for p in tried) if tried else "no file column"
            missing.append((i, f"{what}; no {sample_id}.png/.jpg/.jpeg/.fits under {root}"))
            continue
        if not allow_outside_root and not _inside(found, bases):
            raise GeocnnError(
                f"{source}: row {i + 2} (id {sample_id!r}): the image path {str(value or found)!r} resolves to "
                f"{os.path.realpath(found)}, outside the data root ({', '.join(str(b) for b in bases)}). Catalog "
                "paths may not leave the image folder or the catalog's folder: move the images there, point "
                "data.images at their folder, or set data.allow_outside_root: true (geocnn predict: "
                "--allow-outside-root) if this is intended.")
        out.append(os.path.abspath(found))
    if missing:
        i, detail = missing[0]
        more = f" ({len(missing)} of {len(ids)} rows have no image; first rows: " \
               f"{[r + 2 for r, _ in missing[:5]]})" if len(missing) > 1 else ""
        raise GeocnnError(f"{source}: row {i + 2} (id {ids.iloc[i]!r}): image file not found: {detail}.{more} "
                          "Fix the path in the catalog, point data.images at the folder holding the images, "
                          "or remove the row.")
    return out
