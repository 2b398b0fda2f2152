"""Raw dataset layouts: which files are images, which are masks, their classes and patients.

A layout is chosen by name (the ``layout`` parameter of ``00_etl``) or detected:

``original_segmented``
    ``<root>/Original/<class>/*`` with optional masks or segmented images in
    ``<root>/Segmented/<class>/<same stem>.*`` (the public ALL dataset of Aria
    et al.; what :mod:`leukolab.data.synthetic.smears` writes).
``imagefolder``
    ``<root>/<class>/*``.
``label_in_name``
    the label is in the file name, found by a regular expression with a
    ``label`` group (and optionally a ``patient`` group), anywhere under the
    root. The default, ``_(?P<label>[01])\\.``, reads ALL-IDB2 (``Im001_1.tif``
    is a blast, ``Im131_0.tif`` is not); label names map the captured text to
    class names.
``cnmc``
    C-NMC 2019: images under folders named ``all`` or ``hem`` at any depth
    (``fold_0/all/UID_11_10_1_all.bmp``); the patient id comes from the file
    name (``UID_11_...`` is patient 11, ``UID_H10_...`` healthy subject H10).
``labels_csv``
    images anywhere under the root, labelled by CSV files that name them
    (C-NMC 2019 as distributed: ``images/`` with ``labels.csv``); the labels
    are read on the driver by :func:`leukolab.data.etl.labels.load_csv_labels`
    and carried by the layout; label names map the CSV's labels to class names.

The raw folder is only ever read. Paths are relative to the root, with ``/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from leukolab.data.etl.raw_files import IMAGE_SUFFIXES, LAYOUTS, walk_files

if TYPE_CHECKING:
    from leukolab.data.etl.labels import CsvLabels

ALL_IDB2_LABEL_PATTERN = r"_(?P<label>[01])\."
"""ALL-IDB2 file names end in ``_1`` (blast) or ``_0`` (no blast)."""
ALL_IDB2_LABEL_NAMES = {"0": "Normal", "1": "Blast"}
CNMC_PATIENT_PATTERN = r"^UID_(?P<patient>H?\d+)_"
"""C-NMC 2019 names: ``UID_<patient>_<image>_<cell>_<all|hem>.bmp``; healthy subjects' ids start with H."""
CNMC_CLASS_FOLDERS = {"all": "all", "hem": "hem"}
"""C-NMC folder name (any case) to class name: ``all`` (leukemic blast) or ``hem`` (normal cell)."""


@dataclass(frozen=True)
class SourceFile:
    """Where a raw file sits in its layout.

    ``role`` is ``original``, ``mask``, ``label_file`` or ``ignored``; an ignored file carries
    the quarantine ``reason`` and ``message`` that explain why.
    """

    relative_path: str
    role: str
    class_name: str
    stem: str
    patient_id: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Layout:
    """A named layout with its options; :meth:`locate` tells what a file is from its path alone.

    ``patient_pattern`` (a regex with a ``patient`` group, searched in the file
    name) gives patient ids in any layout; ``None`` takes the layout's default
    (C-NMC's for ``cnmc``, none otherwise); ``labels_csv`` takes a CSV's
    patient column first. ``labels`` are the CSV labels of ``labels_csv``.
    """

    name: str
    label_pattern: str = ALL_IDB2_LABEL_PATTERN
    label_names: dict[str, str] = field(default_factory=lambda: dict(ALL_IDB2_LABEL_NAMES))
    patient_pattern: str | None = None
    labels: CsvLabels | None = None

    def __post_init__(self):
        if self.name not in LAYOUTS:
            raise ValueError(f"unknown layout {self.name!r}; choose one of {LAYOUTS} or None to detect it")
        for option, pattern, group in (("label_pattern", self.label_pattern, "label"),
                                       ("patient_pattern", self.patient_pattern, "patient")):
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{option} {pattern!r} is not a regular expression: {error}") from None
            if group not in compiled.groupindex:
                raise ValueError(f"{option} {pattern!r} needs a named group (?P<{group}>...)")

    def locate(self, relative_path: str) -> SourceFile:
        """Role, class, stem and patient of a file given its path relative to the raw root."""
        path = PurePosixPath(relative_path)
        parts, stem, name = path.parts, path.stem, path.name
        if self.name == "original_segmented":
            if len(parts) == 3 and parts[0] in ("Original", "Segmented"):
                role = "original" if parts[0] == "Original" else "mask"
                return SourceFile(relative_path, role, parts[1], stem, self._patient(name))
            return _misplaced(relative_path, stem, "Original/<class>/<file> or Segmented/<class>/<file>")
        if self.name == "imagefolder":
            if len(parts) == 2:
                return SourceFile(relative_path, "original", parts[0], stem, self._patient(name))
            return _misplaced(relative_path, stem, "<class>/<file>")
        if self.name == "label_in_name":
            match = re.search(self.label_pattern, name)
            if not match:
                return SourceFile(relative_path, "ignored", "", stem, reason="unknown_class",
                                  message=f"the file name does not match label_pattern {self.label_pattern!r}")
            label = match.group("label")
            patient = match.groupdict().get("patient") or self._patient(name)
            return SourceFile(relative_path, "original", self.label_names.get(label, label), stem, patient)
        if self.name == "labels_csv":
            return self._from_labels(relative_path, stem, name)
        # cnmc: the class is the nearest enclosing all/hem folder
        for folder in reversed(parts[:-1]):
            if folder.lower() in CNMC_CLASS_FOLDERS:
                return SourceFile(relative_path, "original", CNMC_CLASS_FOLDERS[folder.lower()], stem, self._patient(name))
        return SourceFile(relative_path, "ignored", "", stem, reason="unknown_class",
                          message="not inside a folder named all or hem")

    def _from_labels(self, relative_path: str, stem: str, name: str) -> SourceFile:
        if self.labels is None:
            raise ValueError("the labels_csv layout needs its labels: leukolab.data.etl.labels.load_csv_labels")
        if relative_path in self.labels.label_files:
            return SourceFile(relative_path, "label_file", "", stem)
        if relative_path in self.labels.refused:
            reason, message = self.labels.refused[relative_path]
            return SourceFile(relative_path, "ignored", "", stem, reason=reason, message=message)
        if relative_path not in self.labels.entries:
            return SourceFile(relative_path, "ignored", "", stem, reason="unknown_class",
                              message=f"not listed in the label files {list(self.labels.label_files)}")
        label, patient = self.labels.entries[relative_path]
        return SourceFile(relative_path, "original", self.label_names.get(label, label), stem, patient or self._patient(name))

    def _patient(self, name: str) -> str | None:
        pattern = self.patient_pattern if self.patient_pattern is not None else (
            CNMC_PATIENT_PATTERN if self.name == "cnmc" else None)
        match = re.search(pattern, name) if pattern else None
        return match.group("patient") if match else None


def _misplaced(relative_path: str, stem: str, expected: str) -> SourceFile:
    return SourceFile(relative_path, "ignored", "", stem, reason="unexpected_location",
                      message=f"not where the layout puts images ({expected})")


def detect_layout(root: str | Path, label_pattern: str = ALL_IDB2_LABEL_PATTERN) -> str:
    """The layout of a raw folder, judged from its folder names and image file names.

    In order: a CSV at the root that names image files (and label files that
    name at least half of them): ``labels_csv``; ``Original/`` present: ``original_segmented``; folders named
    ``all`` and ``hem``: ``cnmc``; two or more top-level folders holding
    images: ``imagefolder``; at least 90% of the image names matching
    ``label_pattern`` with two or more labels: ``label_in_name``; one folder of
    images: ``imagefolder``. Anything else is a ``ValueError`` asking for ``layout``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {root}")
    from leukolab.data.etl.labels import names_images

    files = walk_files(root)
    if names_images(root, files):
        return "labels_csv"
    if (root / "Original").is_dir():
        return "original_segmented"
    images = [path for path in files if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES]
    folders = {part.lower() for path in images for part in PurePosixPath(path).parts[:-1]}
    if {"all", "hem"} <= folders:
        return "cnmc"
    class_folders = {PurePosixPath(path).parts[0] for path in images if len(PurePosixPath(path).parts) == 2}
    if len(class_folders) >= 2:
        return "imagefolder"
    matches = [re.search(label_pattern, PurePosixPath(path).name) for path in images]
    labels = {match.group("label") for match in matches if match}
    if images and len(labels) >= 2 and sum(map(bool, matches)) >= 0.9 * len(images):
        return "label_in_name"
    if class_folders:
        return "imagefolder"
    raise ValueError(
        f"cannot tell the layout of {root} ({len(images)} images; no Original/ folder, no all/ and hem/ folders, "
        f"no class folders, no CSV naming the images, file names do not match {label_pattern!r}): "
        f"pass layout= one of {LAYOUTS}"
    )
