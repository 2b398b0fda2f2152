"""External test sets: class mapping, evaluation of a real (untrained) model on processed folders, the comparison."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from leukolab.config.experiment import Experiment
from leukolab.data.synthetic.folder import DomainShift
from leukolab.data.synthetic.smears import CLASS_NAMES, smear_table
from leukolab.evaluation.external import (ExternalDataset, class_mapping, compare_domains, domain_shift_table, evaluate_external,
                               external_datasets, in_domain_row)
from leukolab.images import decode_image, encode_png, image_array
from leukolab.models.factory import build_model
from leukolab.plots import domain_shift
from leukolab.predictor.smear_model import SmearModel

TO_BINARY = {"Benign": "normal", "Early": "blast", "Pre": "blast", "Pro": "blast"}


def write_processed(folder, frame: pd.DataFrame, classes: list[str], name: str):
    """A folder shaped like an ETL output: ``data/`` Parquet and ``manifest.json``."""
    (folder / "data").mkdir(parents=True)
    frame.to_parquet(folder / "data" / "part-00000.parquet", index=False)
    counts = {s: {c: int(((frame["split"] == s) & (frame["class_name"] == c)).sum()) for c in classes}
              for s in sorted(frame["split"].unique())}
    (folder / "manifest.json").write_text(json.dumps({"dataset": name, "classes": classes, "counts": counts}))
    return folder


@pytest.fixture(scope="module")
def smears():
    """Synthetic smears with the generator's stain/illumination shift (``domain_shift``), half test and half train."""
    frame = smear_table(4, 40, seed=21)
    shift = DomainShift(hue=25, illumination=0.85, blur=0.8)
    frame["image"] = [encode_png(shift.apply(image_array(b))) for b in frame["image"]]
    return frame.assign(split=np.where(np.arange(len(frame)) % 2, "test", "train"))


@pytest.fixture(scope="module")
def model():
    experiment = Experiment.model_validate({"task": "classification", "model": {"architecture": "SimpleCNN", "width": 8}})
    meta = {"experiment": experiment, "class_names": list(CLASS_NAMES), "image_size": 32, "mean": [0.5] * 3,
            "std": [0.25] * 3, "temperature": 1.0}
    return SmearModel(build_model(experiment, len(CLASS_NAMES)).eval(), meta)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smears):
    root = tmp_path_factory.mktemp("external")
    same = write_processed(root / "shifted", smears, list(CLASS_NAMES), "shifted-4class")
    binary = smears.assign(class_name=smears["class_name"].map(TO_BINARY))
    binary["label"] = (binary["class_name"] == "normal").astype("int64")
    return same, write_processed(root / "binary", binary, ["blast", "normal"], "shifted-binary")


def test_mapped_classes_sum_their_probabilities():
    matrix = class_mapping(list(CLASS_NAMES), ["blast", "normal"], TO_BINARY, "x")
    assert np.array([[0.1, 0.2, 0.3, 0.4]]) @ matrix == pytest.approx(np.array([[0.9, 0.1]]))
    same = class_mapping(["a", "b"], ["b", "a"], None, "x")  # same classes, other order
    assert (np.array([[0.7, 0.3]]) @ same == np.array([[0.3, 0.7]])).all()


def test_class_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="give it a label_map"):
        class_mapping(list(CLASS_NAMES), ["blast", "normal"], None, "idb")
    with pytest.raises(ValueError, match=r"does not map the model classes \['Pro'\]"):
        class_mapping(list(CLASS_NAMES), ["blast", "normal"], {k: v for k, v in TO_BINARY.items() if k != "Pro"}, "idb")
    with pytest.raises(ValueError, match=r"maps onto \['healthy'\]"):
        class_mapping(list(CLASS_NAMES), ["blast", "normal"], {**TO_BINARY, "Benign": "healthy"}, "idb")
    with pytest.raises(ValueError, match=r"no model class is mapped onto \['normal'\]"):
        class_mapping(list(CLASS_NAMES), ["blast", "normal"], {c: "blast" for c in CLASS_NAMES}, "idb")


def test_the_parameter_takes_paths_and_dicts(folders, tmp_path):
    same, binary = folders
    parsed = external_datasets([str(same), {"path": str(binary), "name": "idb", "label_map": TO_BINARY, "split": "test"}])
    assert [(d.name, d.split) for d in parsed] == [("shifted-4class", None), ("idb", "test")]
    assert external_datasets(str(binary)) == [ExternalDataset(binary, "shifted-binary")]  # one entry alone
    with pytest.raises(ValueError, match="distinct names"):
        external_datasets([str(same), str(same)])
    with pytest.raises(ValueError, match="unknown keys"):
        external_datasets([{"path": str(same), "labels": TO_BINARY}])
    raw = tmp_path / "raw-images"  # a folder of raw images without labels: out-of-distribution report only
    raw.mkdir()
    assert external_datasets([str(raw)]) == [ExternalDataset(raw, "raw-images", labelled=False)]
    with pytest.raises(ValueError, match="no labels"):
        external_datasets([{"path": str(raw), "label_map": TO_BINARY}])
    with pytest.raises(ValueError, match="neither a processed dataset nor a folder"):
        external_datasets([str(tmp_path / "missing")])


def test_external_evaluation_maps_the_model_onto_the_datasets_classes(folders, model, smears):
    same, binary = folders
    parsed = external_datasets([str(same), {"path": str(binary), "label_map": TO_BINARY, "split": "test"}])
    four = evaluate_external(model, parsed[0], bootstrap_samples=100)
    two = evaluate_external(model, parsed[1], bootstrap_samples=100)
    assert four["images"] == len(smears) and four["split"] == "all" and two["images"] == len(smears) // 2

    test = smears[smears["split"] == "test"]
    images = torch.from_numpy(np.stack([model.prepare(decode_image(b)) for b in test["image"]])).permute(0, 3, 1, 2)
    probabilities = model.forward(images)["probabilities"]
    predicted_normal = probabilities[:, 0] > probabilities[:, 1:].sum(1)
    assert two["accuracy"] == pytest.approx(np.mean(predicted_normal == (test["class_name"] == "Benign").to_numpy()))
    assert {"recall_blast", "f1_normal", "ece_ci_low"} <= set(two) and "f1_Pre" not in two

    rows = [in_domain_row("synthetic", "test", {"images": 40, "accuracy": 0.9, "accuracy_ci_low": 0.8,
                                                "accuracy_ci_high": 0.95, "macro_f1": 0.88, "ece": 0.05}), four, two]
    table = domain_shift_table(rows)
    assert list(table["kind"]) == ["in-domain", "external", "external"]
    assert table["accuracy"][0] == "0.900 [0.800, 0.950]" and table["images"][2] == len(smears) // 2
    domain_shift(pd.DataFrame(rows))


def test_the_domain_comparison_puts_the_in_domain_row_first(folders, model):
    rows = compare_domains(model, external_datasets([str(folders[0])]), "synthetic", "test", {"images": 40, "accuracy": 0.9},
                           bootstrap_samples=0)
    assert [(r["dataset"], r["kind"]) for r in rows] == [("synthetic", "in-domain"), ("shifted-4class", "external")]
