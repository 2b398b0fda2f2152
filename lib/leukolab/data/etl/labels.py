"""Labels from CSV files (the ``labels_csv`` layout), label maps, and the two-class rule.

CSV label files are read once on the driver; :class:`CsvLabels` holds what
they say about every file under the raw root, small and picklable, so
``Layout.locate`` on a Spark worker needs nothing but a path. Rows are matched
to files by file name (a folder in the CSV value is ignored). When several
label files list a name, the one in the deepest folder above the image wins
(``held_out_test/test_labels.csv`` for ``held_out_test/test_images/1.bmp``);
label files that still disagree quarantine it as ``conflicting_labels``, and
files that share a name and the label files that name them are all quarantined
as ``ambiguous_name`` (the CSV cannot tell them apart). An ``acquisition_column``
gives each image its acquisition key (:func:`leukolab.data.etl.acquisition_splits.column_keys`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from leukolab.data.etl.acquisition_splits import column_keys, single_key
from leukolab.data.etl.raw_files import IMAGE_SUFFIXES, LAYOUTS, is_hidden

LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "diagnosis", "target")
"""Column names (any case) taken as the label column when ``label_column`` is not given."""
PATIENT_COLUMNS = ("patient", "patient_id", "patient_no", "patient_number", "patientid", "subject", "subject_id")
"""Column names (any case) taken as the patient column when ``patient_column`` is not given (never the file column)."""
MISSING_SAMPLE = 20


@dataclass(frozen=True)
class CsvLabels:
    """What the label files say about the files under one raw root.

    ``entries``: relative path -> (label, patient id or None); ``refused``:
    relative path -> (quarantine reason, message); ``report``: per label file,
    the columns used and how many names it lists, matches and misses;
    ``acquisition_keys``: relative path -> its ``acquisition_column`` number.
    """

    label_files: tuple[str, ...]
    entries: dict[str, tuple[str, str | None]]
    refused: dict[str, tuple[str, str]]
    report: dict[str, dict]
    acquisition_keys: dict[str, float] = field(default_factory=dict)


@dataclass
class _LabelFile:
    path: str
    columns: dict[str, str | None]
    rows: dict[str, set[tuple[str, str | None]]]  # file name -> (label, patient) pairs
    row_count: int
    keys: dict[str, set[float]]  # file name -> acquisition keys (empty without an acquisition column)

    @property
    def folder(self) -> PurePosixPath:
        return PurePosixPath(self.path).parent


def is_csv(relative_path: str) -> bool:
    return PurePosixPath(relative_path).suffix.lower() == ".csv"


def checked_label_files(labels_files: str | list[str] | None) -> list[str] | None:
    """``labels_files`` as a list of relative POSIX paths; a path outside the raw root is refused."""
    if labels_files is None:
        return None
    paths = [labels_files] if isinstance(labels_files, str) else list(labels_files)
    if not paths:
        raise ValueError("labels_files is empty: give one or more CSV paths relative to the raw folder, or None to detect")
    for path in paths:
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise ValueError(f"labels_files must be paths inside the raw folder, relative to it; got {path!r}")
        if is_hidden(path):
            raise ValueError(f"label file {path!r} is hidden, and hidden files are not input: rename it")
    return [PurePosixPath(path).as_posix() for path in paths]


def detect_label_files(root: str | Path, files: list[str], file_column: str | None = None) -> dict[str, set[str]]:
    """Every CSV under ``root`` with a column naming image files in ``files``: its path -> the image names it lists."""
    image_names = _image_names(files)
    found = {}
    for path in filter(is_csv, files):
        try:
            frame = _read(Path(root), path)
            column = _file_column(frame, path, image_names, file_column)
        except ValueError:
            continue  # not a label file
        found[path] = set(_names(frame[column])) & image_names
    return found


def names_images(root: str | Path, files: list[str]) -> bool:
    """Whether a CSV at the root names image files, and the label files together name at least half of the images."""
    found = detect_label_files(root, files)
    images = _image_names(files)
    listed = set().union(*found.values()) if found else set()
    return any("/" not in path for path in found) and len(listed) >= 0.5 * len(images) > 0


def load_csv_labels(root: str | Path, files: list[str], labels_files: list[str] | None = None,
                    file_column: str | None = None, label_column: str | None = None,
                    patient_column: str | None = None, acquisition_column: str | None = None) -> CsvLabels:
    """Read the label files (``None``: every CSV under the root that names image files) and resolve every file in ``files``."""
    root = Path(root)
    if labels_files is None:
        labels_files = sorted(detect_label_files(root, files, file_column))
        if not labels_files:
            raise ValueError(f"no CSV file under {root} has a column of image file names: set labels_files and file_column")
    image_names = _image_names(files)
    tables = [_load(root, path, image_names, file_column, label_column, patient_column, acquisition_column)
              for path in labels_files]
    label_paths = set(labels_files)
    entries, refused, matched, keys = {}, {}, defaultdict(set), {}
    sharing = defaultdict(list)  # (name, label files) -> paths
    for path in files:
        name = PurePosixPath(path).name
        listing = [table for table in tables if name in table.rows]
        if path in label_paths or not listing:
            continue
        nearest = _nearest(listing, PurePosixPath(path))
        sources = [table.path for table in nearest]
        for table in nearest:
            matched[table.path].add(name)
        sharing[name, tuple(sources)].append(path)
        pairs = set().union(*(table.rows[name] for table in nearest))
        labels = sorted({label for label, _ in pairs if label})
        patients = sorted(patient for _, patient in pairs if patient)
        if not labels:
            refused[path] = ("unknown_class", f"{sources} list {name!r} without a label")
        elif len(labels) > 1:
            refused[path] = ("conflicting_labels", f"{sources} give {name!r} the labels {labels}")
        else:
            entries[path] = (labels[0], patients[0] if patients else None)
            if acquisition_column is not None:
                keys[path] = single_key({table.path: table.keys[name] for table in nearest}, name, acquisition_column)
    for (name, sources), paths in sharing.items():
        if len(paths) > 1:
            for path in paths:
                entries.pop(path, None)
                keys.pop(path, None)
                refused[path] = ("ambiguous_name", f"{len(paths)} files are named {name!r} and {list(sources)} "
                                 "match rows by file name, so cannot tell them apart")
    report = {}
    for table in tables:
        missing = sorted(set(table.rows) - matched[table.path])
        report[table.path] = {"columns": table.columns, "rows": table.row_count, "listed": len(table.rows),
                              "matched": len(matched[table.path]), "missing": len(missing),
                              "missing_sample": missing[:MISSING_SAMPLE]}
    return CsvLabels(tuple(labels_files), entries, refused, report, keys)


def _load(root: Path, path: str, image_names: set[str], file_column, label_column, patient_column,
          acquisition_column=None) -> _LabelFile:
    frame = _read(root, path)
    files = _file_column(frame, path, image_names, file_column)
    labels = _named_column(frame, path, label_column, LABEL_COLUMNS, "label_column", exclude={files})
    if labels is None:
        raise ValueError(f"label file {path}: no label column among {list(frame.columns)} "
                         f"(looked for {list(LABEL_COLUMNS)}): set label_column")
    patients = _named_column(frame, path, patient_column, PATIENT_COLUMNS, "patient_column", exclude={files, labels})
    acquisition = _named_column(frame, path, acquisition_column, (), "acquisition_column", exclude=set())
    rows, keys = defaultdict(set), defaultdict(set)
    patient_values = frame[patients] if patients else [None] * len(frame)
    key_values = column_keys(frame, path, files, acquisition) if acquisition else [None] * len(frame)
    for name, label, patient, key in zip(_names(frame[files]), frame[labels], patient_values, key_values):
        if name:
            rows[name].add((label, patient or None))
            if key is not None:
                keys[name].add(key)
    columns = {"file": files, "label": labels, "patient": patients, **({"acquisition": acquisition} if acquisition else {})}
    return _LabelFile(path, columns, dict(rows), len(frame), dict(keys))


def _read(root: Path, path: str) -> pd.DataFrame:
    file = root / path
    if not file.is_file():
        raise FileNotFoundError(f"label file {path} not found under {root}")
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"label file {path} is not a readable CSV: {error}") from None
    return frame.apply(lambda column: column.str.strip())


def _file_column(frame: pd.DataFrame, path: str, image_names: set[str], file_column: str | None) -> str:
    """``file_column``, or the column whose values name the most image files."""
    if file_column is not None:
        if file_column not in frame.columns:
            raise ValueError(f"label file {path} has no column {file_column!r} (file_column); columns: {list(frame.columns)}")
        return file_column
    hits = {column: len(set(_names(frame[column])) & image_names) for column in frame.columns}
    best = max(hits, key=hits.get, default=None)
    if best is None or hits[best] == 0:
        raise ValueError(f"no column of label file {path} ({list(frame.columns)}) names an image file: set file_column")
    return best


def _named_column(frame, path, given, names, option, exclude) -> str | None:
    if given is not None:
        if given not in frame.columns:
            raise ValueError(f"label file {path} has no column {given!r} ({option}); columns: {list(frame.columns)}")
        return given
    normal = {str(column).strip().lower().replace(" ", "_"): column for column in frame.columns if column not in exclude}
    return next((normal[name] for name in names if name in normal), None)


def _names(values: pd.Series) -> list[str]:
    return [PurePosixPath(value.replace("\\", "/")).name if value else "" for value in values]


def _image_names(files: list[str]) -> set[str]:
    return {PurePosixPath(path).name for path in files if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES}


def _nearest(listing: list[_LabelFile], path: PurePosixPath) -> list[_LabelFile]:
    """The label files in the deepest folder above ``path``; all of them when none is above it."""
    above = [table for table in listing if table.folder in path.parents]
    if not above:
        return listing
    depth = max(len(table.folder.parts) for table in above)
    return [table for table in above if len(table.folder.parts) == depth]


# ---------------------------------------------------------------- label maps and the class check


def check_label_map(label_map: dict[str, str] | None, classes: list[str] | None) -> None:
    """A label map is layout class name -> shared label, both non-empty text; ``classes`` then name shared labels."""
    if label_map is None:
        return
    if not isinstance(label_map, dict) or not label_map:
        raise ValueError(f"label_map must be a non-empty dict of class name -> shared label, got {label_map!r}")
    bad = {key: value for key, value in label_map.items() if not (isinstance(key, str) and isinstance(value, str)
                                                                   and key and value)}
    if bad:
        raise ValueError(f"label_map entries must map text to text: {bad}")
    unknown = sorted(set(classes or []) - set(label_map.values()))
    if unknown:
        raise ValueError(f"classes {unknown} are not labels of label_map {label_map}: with a label_map, classes name its labels")


def class_refusal(class_name: str, label_map: dict[str, str] | None, classes: list[str] | None) -> str | None:
    """Why a file of the layout's class ``class_name`` is ``unknown_class``: not in ``label_map``, or its (mapped)
    class not in ``classes``; ``None`` when it is known."""
    if label_map is not None and class_name not in label_map:
        return f"class {class_name!r} is not in label_map {label_map}"
    mapped = label_map[class_name] if label_map is not None else class_name
    if classes and mapped not in classes:
        return f"class {mapped!r} is not one of {classes}"
    return None


def apply_label_map(originals: pd.DataFrame, label_map: dict[str, str] | None) -> pd.DataFrame:
    """Originals with ``class_name`` mapped to shared labels and the layout's class kept as ``source_class``."""
    if label_map is None:
        return originals
    return originals.assign(source_class=originals["class_name"], class_name=originals["class_name"].map(label_map))


def label_entries(labels: CsvLabels | None, table: pd.DataFrame, label_map: dict[str, str] | None) -> dict:
    """Manifest entries: ``labels`` (label files, columns, listed files missing) and ``label_map`` (the map, images
    per source class and shared label); each only where it applies."""
    entries = {}
    if labels is not None:
        missing = sorted(name for report in labels.report.values() for name in report["missing_sample"])
        entries["labels"] = {"files": labels.report, "missing": sum(r["missing"] for r in labels.report.values()),
                             "missing_sample": missing[:MISSING_SAMPLE]}
    if label_map is not None:
        counts = table.groupby(["source_class", "class_name"]).size()
        per_class = defaultdict(dict)
        for (source, label), n in sorted(counts.items()):
            per_class[source][label] = int(n)
        entries["label_map"] = {"map": dict(label_map), "counts": dict(per_class)}
    return entries


def require_two_classes(class_names, layout: str, detected: bool, files: Iterable[str],
                        label_map: dict[str, str] | None = None) -> None:
    """Refuse a classification dataset that has fewer than two classes after curation, saying what to try."""
    found = sorted(set(class_names))
    if len(found) >= 2:
        return
    how = "detected" if detected else "chosen"
    message = (f"the dataset has {len(found)} class(es) after curation ({found}) with layout {layout!r} ({how}); "
               f"classification needs at least two. Set layout= one of {LAYOUTS}")
    csvs = [path for path in files if is_csv(path)]
    if csvs and layout != "labels_csv":
        message += f"; CSV files are present ({csvs[:3]}): if they hold the labels, layout='labels_csv'"
    if label_map is not None:
        message += f"; label_map {label_map} maps the classes to its labels"
    raise ValueError(message)
