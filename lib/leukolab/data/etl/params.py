"""The ETL's parameters: one typed model holds every default, checks every value, and is part of the fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leukolab.data.etl import labels as csv_labels
from leukolab.data.etl.raw_files import LAYOUTS
from leukolab.data.etl.sources import ALL_IDB2_LABEL_NAMES, ALL_IDB2_LABEL_PATTERN, Layout
from leukolab.images import ImageRules

Fraction = Annotated[float, Field(ge=0, le=1)]


class EtlParams(BaseModel):
    """Everything that decides the output; part of the dataset fingerprint.

    ``label_pattern``/``label_names`` are read by the ``label_in_name`` layout,
    ``patient_pattern`` by every layout (``None``: the layout's default, C-NMC
    ids for ``cnmc``). ``near_duplicate_distance`` is the largest Hamming
    distance between two 64-bit perceptual hashes that makes two images near
    duplicates (``near_duplicates=False`` turns their detection off). ``labels_files`` and the
    ``*_column`` options (``None``: detect) are read by ``labels_csv``; ``label_map``: class -> shared label.

    Masks (:mod:`leukolab.data.etl.masks`): segmented images are thresholded at brightness ``mask_threshold`` (above
    JPEG noise on black), lose components under ``mask_min_component`` of the field and (``mask_fill_holes``) their
    holes; exact binary masks stay as they are. A mask with a cell fraction under ``mask_min_fraction``, or covering
    less than ``mask_min_agreement`` of the original's stained nuclei, or under ``mask_min_relative`` times the median
cell fraction of the masks that pass, is implausible: dropped, its image kept.

    Acquisition-aware splits (:mod:`leukolab.data.etl.acquisition_splits`): per class, ``acquisition_blocks``
    contiguous blocks in acquisition order (the file-name number, or ``acquisition_column`` of the ``labels_csv``
    label files), whole blocks for val/test/holdouts, ``acquisition_embargo`` neighbours withheld.
    """

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(96, ge=16, description="side of the square images written to the dataset")
    layout: str | None = Field(None, description=f"one of {LAYOUTS}; None: detect")
    classes: list[str] | None = Field(None, description="class names in label order; None: every class found, sorted")
    train_fraction: Fraction = 0.7
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    holdouts: int = Field(0, ge=0, description="extra stratified holdout splits holdout_1..k")
    holdout_fraction: Fraction = 0.1
    min_side: int = Field(ImageRules.min_side, ge=1, description="images with a shorter side are quarantined as too_small")
    max_aspect_ratio: float = Field(ImageRules.max_aspect_ratio, ge=1,
                                    description="images whose long side is more times their short side: too_elongated")
    require_masks: bool = Field(False, description="quarantine originals without a mask")
    max_bad_fraction: Fraction = Field(0.2, description="fail when more of the files than this are unusable")
    seed: int = 42
    label_pattern: str = Field(ALL_IDB2_LABEL_PATTERN, description="label_in_name: regex with a `label` group")
    label_names: dict[str, str] = Field(default_factory=lambda: dict(ALL_IDB2_LABEL_NAMES),
                                        description="label_in_name, labels_csv: label -> class name")
    patient_pattern: str | None = Field(None, description="regex with a `patient` group; None: the layout's default")
    near_duplicates: bool = Field(True, description="group near-duplicate images (perceptual hashes) like copies")
    near_duplicate_distance: int = Field(4, ge=0, lt=64, description="perceptual-hash bits apart that are near duplicates")
    png_compress_level: int = Field(1, ge=0, le=9)
    labels_files: list[str] | None = Field(None, description="labels_csv: CSV path(s) in the raw folder; None: detect")
    file_column: str | None = Field(None, description="labels_csv: column of file names; None: detect")
    label_column: str | None = Field(None, description="labels_csv: column of labels; None: detect")
    patient_column: str | None = Field(None, description="labels_csv: column of patient ids; None: detect")
    label_map: dict[str, str] | None = Field(None, description="class -> shared label, e.g. {Pre: blast}")
    mask_threshold: int = Field(48, ge=0, lt=255, description="segmented images: brightness above which a pixel is cell")
    mask_min_component: Fraction = Field(0.001, description="drop mask components smaller than this share of the field")
    mask_fill_holes: bool = True
    mask_min_fraction: Fraction = Field(0.005, description="a mask with less cell than this is implausible")
    mask_min_agreement: Fraction = Field(0.5, description="implausible when covering less of the stained nuclei")
    mask_min_relative: Fraction = Field(0.2, description="implausible below this times the median plausible coverage")
    acquisition_splits: bool = Field(True, description="also write acquisition-aware splits when file names carry a "
                                     "running number (leukolab.data.etl.acquisition_splits)")
    acquisition_blocks: int = Field(20, ge=2, description="contiguous blocks per class in acquisition order")
    acquisition_embargo: int = Field(4, ge=0, description="images withheld from train on each side of an evaluation block")
    acquisition_column: str | None = Field(None, description="labels_csv: column of the label files holding each "
                                           "image's acquisition key (a number); None: the last number in the file name")

    @field_validator("labels_files", mode="before")
    @classmethod
    def _label_files(cls, value):
        return csv_labels.checked_label_files(value)

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value):
        if value is not None and value not in LAYOUTS:
            raise ValueError(f"unknown layout {value!r}; choose one of {LAYOUTS} or None to detect it")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        self.layout_for(self.layout or "imagefolder")  # checks the patterns
        csv_labels.check_label_map(self.label_map, self.classes)
        return self

    @property
    def image_rules(self) -> ImageRules:
        """What the ETL accepts as an image; published models carry it, so the API refuses the same images."""
        return ImageRules(min_side=self.min_side, max_aspect_ratio=self.max_aspect_ratio)

    def layout_for(self, name: str, raw_dir: Path | None = None, on_disk: list[str] | None = None) -> Layout:
        """The :class:`Layout` ``name`` with these parameters' options (``labels_csv`` reads its CSVs under ``raw_dir``)."""
        labels = None if name != "labels_csv" or raw_dir is None else csv_labels.load_csv_labels(
            raw_dir, on_disk, self.labels_files, self.file_column, self.label_column, self.patient_column,
            self.acquisition_column)
        return Layout(name, self.label_pattern, dict(self.label_names), self.patient_pattern, labels)
