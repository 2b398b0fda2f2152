"""The published model: an MLflow pyfunc that takes raw image bytes and carries its own preprocessing.

Input: a DataFrame with a binary column ``image`` (JPEG, PNG, TIFF, ... bytes).
Output per row: ``predicted_class``, ``confidence`` and ``prob_<class>`` for
models that classify; ``mask_png`` (base64 PNG, 0/255) and ``mask_fraction``
for models that segment; with ``params={"explain": True}``, ``heatmap_png``
(base64 PNG, 0-255: the Grad-CAM heatmap of the predicted class, see
:mod:`leukolab.models.heatmaps`) for models that classify; ``ood_score`` and
``out_of_distribution`` for models that carry an out-of-distribution check
(:mod:`leukolab.ood`; models logged before it carry none and answer without).
The model's folder holds the weights, a JSON of its metadata (:class:`~leukolab.predictor.meta.ModelMeta`:
classes, image size, mean/std, temperature, the preprocessing and its fitted stain target), the fitted OOD check
(``ood.npz``) and this library's code, so ``mlflow.pyfunc.load_model`` is all a server needs. Every path to the
network (:meth:`SmearModel.forward`, :meth:`SmearModel.explain_prepared`) applies the model's preprocessing to the
resized images (:mod:`leukolab.models.preprocessing`), as training applied it to the dataset's; the OOD check's
colour and size detectors see the images before it.
"""

from __future__ import annotations

import base64
import functools
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from PIL import Image

from leukolab.config import PROJECT_ROOT
from leukolab.config.experiment import Experiment
from leukolab.images import ImageRules, decode_image, encode_png, resize_square
from leukolab.models.factory import build_model
from leukolab.models.inputs import normalize
from leukolab.ood import Inputs, OodDetector
from leukolab.ood.features import captured_features, features_per_image
from leukolab.predictor.gated_tta import gated_outputs
from leukolab.predictor.meta import ModelMeta

SERVING_PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "timm", "mlflow", "pandas", "numpy", "pillow", "pyyaml",
                    "grad-cam", "ttach", "opencv-python-headless")


class SmearModel(mlflow.pyfunc.PythonModel):
    """Preprocessing, the network, the out-of-distribution check and postprocessing in one object."""

    meta: ModelMeta
    """What it was logged with (``meta.json``): classes, image size, image rules, mean/std, temperature, experiment."""
    tta_gate: float | None = None
    """For a model with test-time augmentation: only images whose plain confidence is under this get the eight views
    (:mod:`leukolab.predictor.gated_tta`; loading by URI sets it from the version's ``tta_gate`` tag); None: all do."""
    ood: OodDetector | None = None
    """The fitted out-of-distribution check; None for models that classify nothing or were logged without one."""

    def __init__(self, network: torch.nn.Module | None = None, meta: ModelMeta | dict | None = None,
                 ood: OodDetector | None = None):
        self.network, self.meta, self.ood = network, None if meta is None else ModelMeta.read(meta), ood

    def load_context(self, context) -> None:
        self.meta = ModelMeta.from_json(Path(context.artifacts["meta"]).read_text())
        self.ood = OodDetector.load(context.artifacts["ood"]) if "ood" in context.artifacts else None
        network = build_model(self.meta.experiment, len(self.meta.class_names))
        network.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.network = network.eval()

    def __getstate__(self):  # pickled into the model folder without its weights (those are artifacts)
        return {"network": None, "meta": None}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def image_rules(self) -> ImageRules:
        """What the ETL that made its training data accepted as an image (defaults for models that predate them)."""
        return self.meta.image_rules

    @property
    def experiment(self) -> Experiment:
        return self.meta.experiment

    @property
    def task(self) -> str:
        return self.experiment.task

    def prepare(self, image: Image.Image) -> np.ndarray:
        """One RGB image resized to the network's input: an HxWx3 uint8 array (what :meth:`predict_prepared` stacks)."""
        return np.asarray(resize_square(image.convert("RGB"), self.meta.image_size))

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Class probabilities, logits (both temperature-scaled) and penultimate features, and mask probabilities,
        for a uint8 batch at the input size, after the model's preprocessing (border crop, stain normalisation; see
        :mod:`leukolab.models.preprocessing`), with test-time augmentation gated by :attr:`tta_gate` when it is set."""
        self.network.eval()
        batch = self.meta.preprocessing.apply(batch)
        if self.tta_gate is None or not getattr(self.network, "tta", False) or self.task != "classification":
            return self._outputs(batch)
        plain = self._outputs(batch, tta=False)
        return gated_outputs(plain, lambda rows: self._outputs(batch[torch.from_numpy(rows)]), self.tta_gate)

    def _outputs(self, batch: torch.Tensor, tta: bool | None = None) -> dict[str, np.ndarray]:
        """The outputs of one pass (``tta``: as the network is set, or on/off for this pass alone)."""
        with captured_features(self.network) as captured:
            out = self.network(normalize(batch, self.meta.mean, self.meta.std), **({} if tta is None else {"tta": tta}))
        result = {}
        if "logits" in out:
            logits = out["logits"] / self.meta.temperature
            result.update(probabilities=torch.softmax(logits, 1).numpy(), logits=logits.numpy())
            if captured:
                result["features"] = features_per_image(captured, len(batch))
        if "mask" in out and self.task != "classification":
            result["mask"] = torch.sigmoid(out["mask"])[:, 0].numpy()
        return result

    def predict_images(self, images: list[Image.Image], explain: bool = False) -> list[dict]:
        """One answer per image, as in the module docstring (the mask and heatmap at model resolution)."""
        return self.predict_prepared([self.prepare(image) for image in images], explain)

    def predict_prepared(self, arrays: list[np.ndarray], explain: bool = False) -> list[dict]:
        """One answer per image made by :meth:`prepare`, from one forward pass over all of them (and, with
        ``explain``, one Grad-CAM pass for the predicted classes)."""
        out = self.forward(_batch(arrays))
        ood = self.ood_scores(out, arrays)["combined"] if self.ood is not None and "logits" in out else None
        answers = []
        for i in range(len(arrays)):
            answer = {}
            if "probabilities" in out:
                p = out["probabilities"][i]
                answer.update({"predicted_class": self.class_names[int(p.argmax())], "confidence": float(p.max())})
                answer.update({f"prob_{name}": float(v) for name, v in zip(self.class_names, p)})
            if ood is not None:
                answer.update(ood_score=float(ood[i]), out_of_distribution=bool(self.ood.out_of_distribution(ood[i])))
            if "mask" in out:
                mask = (out["mask"][i] >= 0.5).astype(np.uint8)
                answer["mask_png"] = base64.b64encode(encode_png(mask * 255)).decode()
                answer["mask_fraction"] = float(mask.mean())
            answers.append(answer)
        if explain:
            predicted = [self.class_names.index(answer["predicted_class"]) for answer in answers] if "probabilities" in out else None
            for answer, heatmap in zip(answers, self.explain_prepared(arrays, predicted)):
                answer["heatmap_png"] = base64.b64encode(encode_png(np.round(heatmap * 255).astype(np.uint8))).decode()
        return answers

    def ood_inputs(self, arrays: list[np.ndarray], batch_size: int = 64, out: dict | None = None) -> Inputs:
        """What the OOD detectors score for images made by :meth:`prepare` (``out``: their :meth:`forward`, when known)."""
        if out is None:
            parts = [self.forward(_batch(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
            out = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
        return Inputs(out.get("features"), out.get("logits"), np.stack(arrays))

    def ood_scores(self, out: dict, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Every detector's score and the combined one of images made by :meth:`prepare`, from their :meth:`forward`."""
        return self.ood.scores(self.ood_inputs(arrays, out=out))

    def explain_prepared(self, arrays: list[np.ndarray], classes: list[int] | None = None) -> list[np.ndarray]:
        """Grad-CAM heatmaps (HxW floats in [0, 1] at the network's input size, test-time augmentation off) of images
        made by :meth:`prepare`, for ``classes`` (indices into :attr:`class_names`; default: the predicted classes).
        A ``ValueError`` for a segmentation-only model."""
        explainer, batch = self.explainer, _batch(arrays)
        if classes is None:
            classes = self.forward(batch)["probabilities"].argmax(1).tolist()
        return list(explainer(normalize(self.meta.preprocessing.apply(batch), self.meta.mean, self.meta.std), classes))

    def explain_image(self, image_bytes: bytes, class_name: str | None = None) -> np.ndarray:
        """The heatmap of one image's bytes for ``class_name`` (default: the predicted class), as :meth:`explain_prepared`."""
        if class_name is not None and class_name not in self.class_names:
            raise ValueError(f"unknown class {class_name!r}; the model's classes are {self.class_names}")
        classes = None if class_name is None else [self.class_names.index(class_name)]
        return self.explain_prepared([self.prepare(decode_image(image_bytes, self.image_rules))], classes)[0]

    @functools.cached_property
    def explainer(self):
        """The :class:`~leukolab.models.heatmaps.HeatmapExplainer` of the network, made on first use (imported then:
        a model that is never asked to explain pays nothing for it)."""
        from leukolab.models.heatmaps import HeatmapExplainer

        return HeatmapExplainer(self.network, self.meta.image_size)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Answers as in the module docstring; ``params={"explain": True}`` adds ``heatmap_png``."""
        images = [decode_image(_as_bytes(value), self.image_rules) for value in model_input["image"]]
        return pd.DataFrame(self.predict_images(images, explain=bool((params or {}).get("explain", False))))


def _batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 arrays as one N x 3 x H x W batch."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _as_bytes(value) -> bytes:
    if isinstance(value, str):  # JSON clients send binary columns as base64
        return base64.b64decode(value)
    return bytes(value)


def serving_requirements() -> list[str]:
    """Pinned requirements of the serving environment, read from the project's requirements.txt."""
    pins = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    return [pins[name] for name in SERVING_PACKAGES if name in pins]


def log_smear_model(network: torch.nn.Module, meta: ModelMeta | dict, example_images: list[bytes], name: str = "model",
                    ood: OodDetector | None = None):
    """Log the network (and its fitted OOD check) as a pyfunc model of the active run, with signature and input example."""
    scratch = Path(tempfile.mkdtemp(prefix="leukolab-model-"))
    torch.save(network.state_dict(), scratch / "weights.pt")
    model = SmearModel(network.eval(), meta, ood)
    artifacts = {"weights": str(scratch / "weights.pt"), "meta": str(scratch / "meta.json")}
    if ood is not None:
        artifacts["ood"] = str(ood.save(scratch / "ood.npz"))
    (scratch / "meta.json").write_text(model.meta.to_json())
    example = pd.DataFrame({"image": example_images})
    signature = infer_signature(example, model.predict(None, example), params={"explain": False})
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SmearModel(),
        artifacts=artifacts,
        code_paths=[str(Path(__file__).parents[1])],
        signature=signature,
        input_example=example,
        pip_requirements=serving_requirements(),
    )

