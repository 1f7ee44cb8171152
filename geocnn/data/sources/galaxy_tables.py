"""Galaxy catalogs: Kaggle Galaxy Zoo, GZ DECaLS/Zoobot, class folders and any CSV/Parquet, read as a Catalog.

Catalogs and image folders may be local paths or object-storage / HTTP URIs (s3://, gs://, https://), read through
fsspec; a catalog's relative image paths then resolve against its folder URI, never above the bucket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from geocnn.config import GalaxyData
from geocnn.data.catalog import (
    GROUP,
    ID,
    IMAGE,
    LAT,
    LON,
    RESERVED,
    SPLIT,
    SPLIT_NAMES,
    Catalog,
    _blank,
    encode_classes,
    require_columns,
    validate_ids,
    validate_targets,
)
from geocnn.data.schema import KAGGLE_TREE
from geocnn.data.sources import uris
from geocnn.data.sources.images import (
    IMAGE_SUFFIXES,
    file_root,
    folder_of,
    location,
    relative_name,
    resolve_files,
    subfolders,
    walk_images,
)
from geocnn.data.sources.uris import is_uri
from geocnn.errors import GeocnnError

KAGGLE_ID = "GalaxyID"
KAGGLE_IMAGE_DIR = "images_training_rev1"
ZOOBOT_ID_COLUMNS = ("id_str", "iauname")
ZOOBOT_FILE_COLUMNS = ("file_loc", "file", "png_loc", "local_png_loc")
FOLDER_LABEL = "label"


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------


def read_class_names(value: list[str] | dict[str, str] | str) -> list[str] | dict[str, str]:
    """data.class_names as given, or read from its YAML/JSON/CSV file (CSV: code and name columns)."""
    if not isinstance(value, str):
        return value
    if is_uri(value):
        if not uris.is_file(value):
            raise GeocnnError(f"data.class_names: {value} is not a file; give a list, a {{code: name}} mapping, or "
                              "a YAML/JSON/CSV file holding one")
        with uris.local_copy(value) as local:
            return read_class_names(str(local))
    path = Path(value).expanduser()
    if not path.is_file():
        raise GeocnnError(f"data.class_names: {path} is not a file; give a list, a {{code: name}} mapping, or a "
                          "YAML/JSON/CSV file holding one")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str)
        if frame.shape[1] < 2:
            raise GeocnnError(f"{path}: data.class_names CSV needs two columns, code and name")
        return dict(zip(frame.iloc[:, 0].str.strip(), frame.iloc[:, 1].str.strip()))
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, (list, dict)):
        raise GeocnnError(f"{path}: data.class_names file must hold a list or a {{code: name}} mapping")
    return loaded


def read_galaxy_catalog(data: GalaxyData) -> Catalog:
    """Read the galaxy catalog described by ``data`` (targets as read; the task spec validates and encodes them).

    Args:
        data: the ``data`` section of the config; ``data.format`` picks the reader (kaggle, zoobot, folders, csv).

    Returns:
        A Catalog with absolute image paths (or object URIs) that all exist, unique string ids, the target columns
        and every other column of the catalog file (class folders: int64 class codes with ``classes`` naming them).

    Raises:
        GeocnnError: on any problem with the config, the catalog file, its columns, rows or images.
    """
    fmt = data.format
    images = location(data.images) if data.images else None
    targets = list(data.targets) or None
    if fmt == "synthetic":
        raise GeocnnError("data.format 'synthetic' is generated, not read from files; the galaxy readers handle "
                          "kaggle, zoobot, folders and csv. Use the synthetic generator, or change data.format.")
    if fmt == "folders":
        if targets not in (None, [FOLDER_LABEL]):
            raise GeocnnError(f"data.format 'folders' has a single target '{FOLDER_LABEL}' (the subfolder name); "
                              f"data.targets is {targets}. Remove data.targets or set it to ['{FOLDER_LABEL}'].")
        if images is None:
            raise GeocnnError("data.format 'folders' needs data.images: the folder holding one subfolder per class.")
        return read_folders(images)
    if not data.catalog:
        raise GeocnnError(f"data.format {fmt!r} needs data.catalog: the path of the catalog file (CSV/Parquet).")
    path = location(data.catalog)
    if fmt == "kaggle":
        return read_kaggle(path, images, targets, id_column=data.id_column or KAGGLE_ID,
                           group_column=data.group_column, allow_outside_root=data.allow_outside_root)
    if fmt == "zoobot":
        return read_zoobot(path, images, targets, id_column=data.id_column, file_column=data.file_column,
                           group_column=data.group_column, allow_outside_root=data.allow_outside_root)
    file_column: str | None = data.file_column
    if file_column is None and "file" in _read_header(path):
        file_column = "file"
    return read_csv_catalog(path, images, id_column=data.id_column or "id", file_column=file_column,
                            targets=targets, group_column=data.group_column,
                            allow_outside_root=data.allow_outside_root)


# --------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------


def read_unlabeled(data: GalaxyData) -> Catalog:
    """Every image of the configured catalog or folder, labels dropped (self-supervised pretraining): a CSV catalog
    needs no target column; format 'folders', or no catalog, takes every image under data.images (class subfolders
    or a plain folder)."""
    if data.catalog and data.format != "folders":
        if data.format == "csv" and not data.targets:
            path = location(data.catalog)
            file_column = data.file_column or ("file" if "file" in _read_header(path) else None)
            cat = read_csv_catalog(path, location(data.images) if data.images else None,
                                   id_column=data.id_column or "id", file_column=file_column,
                                   group_column=data.group_column, require_targets=False,
                                   allow_outside_root=data.allow_outside_root)
        else:
            cat = read_galaxy_catalog(data)
        return Catalog(cat.frame.drop(columns=cat.targets), [], cat.source)
    if not data.images:
        raise GeocnnError("data.images / data.catalog: pretraining needs the galaxy images: a catalog file "
                          "(data.catalog) or a folder of images (data.images)")
    root = location(data.images)
    if not (uris.is_dir(root) if is_uri(root) else Path(root).is_dir()):
        raise GeocnnError(f"data.images={data.images}: not a folder; point it at a folder of images")
    files = walk_images(root)
    if not files:
        raise GeocnnError(f"data.images={data.images}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                          "add images or point data.images elsewhere")
    frame = pd.DataFrame({ID: [relative_name(f, root) for f in files],
                          IMAGE: [str(f) if is_uri(f) else os.path.abspath(f) for f in files]})
    return Catalog(frame=frame, targets=[], source=str(root))


def read_kaggle(catalog: Path | str, images: Path | str | None = None, targets: list[str] | None = None, *,
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
    catalog = location(catalog)
    if images is None:
        folder = folder_of(catalog)
        beside = uris.join(str(folder), KAGGLE_IMAGE_DIR) if is_uri(folder) else folder / KAGGLE_IMAGE_DIR
        images = beside if (uris.is_dir(beside) if is_uri(beside) else beside.is_dir()) else folder
    targets = list(targets) if targets else list(KAGGLE_TREE.columns)
    cat = _table_catalog(catalog, images, id_column=id_column, id_candidates=(), file_column=None,
                         file_candidates=(), targets=targets, group_column=group_column,
                         templates=("{id}.jpg",), allow_outside_root=allow_outside_root)
    validate_targets(cat.frame, cat.targets, cat.source)
    for col in cat.targets:
        cat.frame[col] = pd.to_numeric(cat.frame[col]).astype("float64")
    return cat


def read_zoobot(catalog: Path | str, images: Path | str | None = None, targets: list[str] | None = None, *,
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
        A Catalog with targets as read (the task spec validates and encodes them).

    Raises:
        GeocnnError: on a missing file, empty catalog, absent column, duplicate id or missing image.
    """
    return _table_catalog(location(catalog), images, id_column=id_column, id_candidates=ZOOBOT_ID_COLUMNS,
                          file_column=file_column, file_candidates=ZOOBOT_FILE_COLUMNS, targets=targets,
                          group_column=group_column, allow_outside_root=allow_outside_root)


def read_csv_catalog(catalog: Path | str, images: Path | str | None = None, id_column: str = "id",
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
        A Catalog with targets as read (the task spec validates and encodes them).

    Raises:
        GeocnnError: on a missing file, empty catalog, absent column, duplicate id or missing image.
    """
    return _table_catalog(location(catalog), images, id_column=id_column, id_candidates=(), file_column=file_column,
                          file_candidates=(), targets=targets, group_column=group_column,
                          require_targets=require_targets, allow_outside_root=allow_outside_root)


def read_folders(root: Path | str) -> Catalog:
    """Read an image-folder dataset: one subfolder per class, images (jpg/jpeg/png/fits) inside; or the same under
    train/, validation/ (val/, valid/, dev/) and test/ folders, the data set's own split (column ``split``).

    Args:
        root: folder (or folder URI) holding the class subfolders, or the split folders (hidden folders are
            ignored; images may be nested).

    Returns:
        A Catalog with int64 codes in column ``label``, ``classes`` = the sorted folder names (numbers sorted
        numerically) and ids ``<class>/<file stem>``; with split folders also ``split`` (train/val/test).

    Raises:
        GeocnnError: if the folder is missing, has no class subfolders, a class folder has no images,
            there are fewer than 2 classes, two files would get the same id, or split folders are mixed with
            other folders (an ambiguous layout).
    """
    root = location(root)
    if is_uri(root):
        root = str(root).rstrip("/")
    if not (uris.is_dir(root) if is_uri(root) else Path(root).is_dir()):
        raise GeocnnError(f"{root}: image folder (data.images) does not exist or is not a folder. Point data.images "
                          "at a folder with one subfolder per class.")
    top = subfolders(root)
    if not top:
        raise GeocnnError(f"{root}: no class subfolders found. data.format 'folders' expects one subfolder per class "
                          "(e.g. spiral/, elliptical/) with the images inside.")
    named = [d for d in top if _leaf(d).lower() in SPLIT_NAMES]
    if named and len(named) != len(top):
        others = [_leaf(d) for d in top if d not in named]
        raise GeocnnError(f"{root}: ambiguous layout: split folders {[_leaf(d) for d in named]} beside other folders "
                          f"{others}. Either one folder per class, or only train/ validation/ test/ folders each "
                          "holding the class folders; move or rename the others.")
    parts = [(SPLIT_NAMES[_leaf(d).lower()], d) for d in named] if named else [(None, root)]
    ids: list[str] = []
    files: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    seen: dict[str, Path | str] = {}
    for part, folder in parts:
        class_dirs = subfolders(folder)
        if part is not None and not class_dirs:
            raise GeocnnError(f"{folder}: a split folder without class folders; put its images in one subfolder per "
                              "class (e.g. train/spiral/, train/elliptical/)")
        for class_dir in class_dirs:
            found = walk_images(class_dir)
            if not found:
                raise GeocnnError(f"{class_dir}: class folder contains no images ({', '.join(IMAGE_SUFFIXES)}, any "
                                  "case). Add images or remove the folder.")
            for path in found:
                rel = os.path.splitext(relative_name(path, class_dir))[0]
                sample_id = f"{_leaf(class_dir)}/{rel}"
                if sample_id in seen:
                    raise GeocnnError(f"{path} and {seen[sample_id]} would both get id {sample_id!r}; ids must be "
                                      "unique. Rename or remove one of them.")
                seen[sample_id] = path
                ids.append(sample_id)
                files.append(str(path) if is_uri(path) else os.path.abspath(path))
                labels.append(_leaf(class_dir))
                splits.append(part or "")
    names = sorted(set(labels))
    if len(names) < 2:
        raise GeocnnError(f"{root}: only one class subfolder ({names[0]}/); classification needs at least 2 "
                          "classes. Add a subfolder per class.")
    frame = pd.DataFrame({ID: pd.Series(ids, dtype=str), IMAGE: pd.Series(files, dtype=str), FOLDER_LABEL: labels})
    if named:
        frame[SPLIT] = splits
    frame[FOLDER_LABEL], classes = encode_classes(frame[FOLDER_LABEL].astype(str), str(root), FOLDER_LABEL)
    return Catalog(frame=frame, targets=[FOLDER_LABEL], source=str(root), classes=classes)


# --------------------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------------------


def _leaf(path: Path | str) -> str:
    """The last part of a folder path or folder URI."""
    return os.path.basename(str(path).rstrip("/"))


def _suffix(path: Path | str) -> str:
    return os.path.splitext(uris.name(str(path)) if is_uri(path) else Path(path).name)[1].lower()


def _is_parquet(path: Path | str) -> bool:
    return _suffix(path) in (".parquet", ".pq")


@contextlib.contextmanager
def _opened(path: Path | str) -> Iterator[Any]:
    """A local catalog file as its path; a catalog URI as an open fsspec file (read without a local copy)."""
    if is_uri(path):
        with uris.open_uri(str(path)) as handle:
            yield handle
    else:
        yield path


def _check_catalog_file(path: Path | str) -> None:
    if is_uri(path):
        meta = uris.info(str(path))
        if meta is None:
            raise GeocnnError(f"{path}: catalog object does not exist. Fix data.catalog (the URI of a CSV/Parquet "
                              "file).")
        if meta.get("type") == "directory":
            raise GeocnnError(f"{path}: data.catalog is a folder, not a catalog file (CSV/Parquet). For one "
                              "subfolder per class use data.format=folders with data.images.")
        return
    path = Path(path)
    if not path.exists():
        raise GeocnnError(f"{path}: catalog file does not exist. Fix data.catalog (relative paths are relative to "
                          "the working directory).")
    if path.is_dir():
        raise GeocnnError(f"{path}: data.catalog is a folder, not a catalog file (CSV/Parquet). For one subfolder "
                          "per class use data.format=folders with data.images.")


def _read_header(path: Path | str) -> list[str]:
    """Column names of a catalog file (of a URI: its header line or Parquet footer only)."""
    _check_catalog_file(path)
    try:
        with _opened(path) as source:
            if _is_parquet(path):
                return list(pq.read_schema(source).names)
            return [str(c) for c in pd.read_csv(source, nrows=0, sep=_sep(path)).columns]
    except GeocnnError:
        raise
    except pd.errors.EmptyDataError:
        raise GeocnnError(f"{path}: the catalog file is empty (no header, no rows). Point data.catalog at a "
                          "catalog with a header line and samples.") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise GeocnnError(f"{path}: cannot read the catalog ({exc}). It must be a CSV with a header line or a "
                          "Parquet file.") from None


def _sep(path: Path | str) -> str:
    return "\t" if _suffix(path) == ".tsv" else ","


def _read_table(path: Path | str, text_columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV/Parquet catalog (a file or a URI), the given columns as text (so ids keep leading zeros)."""
    _check_catalog_file(path)
    try:
        with _opened(path) as source:
            if _is_parquet(path):
                frame = pd.read_parquet(source)
            else:
                frame = pd.read_csv(source, sep=_sep(path), dtype={c: str for c in text_columns})
    except GeocnnError:
        raise
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


def _table_catalog(path: Path | str, images: Path | str | None, *, id_column: str | None, id_candidates: Sequence[str],
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

    root = file_root(path, images)
    files = raw[file_column] if file_column else None
    image_paths = resolve_files(ids, files, file_column, root, folder_of(path), templates, source, allow_outside_root)

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
    for col in (LAT, LON):
        if col in raw.columns:
            frame[col] = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)
    used = {id_column, file_column, *frame.columns}
    kept = {col: passthrough(raw[col]).to_numpy() for col in raw.columns if col not in used and col not in RESERVED}
    if kept:
        frame = pd.concat([frame, pd.DataFrame(kept, index=frame.index)], axis=1)
    return Catalog(frame=frame, targets=targets, source=source, classes=[])


def passthrough(values: pd.Series) -> pd.Series:
    """A source column kept beside the catalog's own: text when it mixes types (so it survives Parquet)."""
    if values.dtype == object and len({type(v) for v in values.dropna()}) > 1:
        return values.map(lambda v: v if v is None or (isinstance(v, float) and v != v) else str(v))
    return values


