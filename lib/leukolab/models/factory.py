"""Build the network an experiment names: smp architectures and encoders by registry name.

Every network returns a dict: ``{"logits": N x classes}`` for classifiers,
``{"mask": N x 1 x H x W}`` (logits) for segmenters, both for joint models,
so training, evaluation and serving treat them alike.
"""

from __future__ import annotations

import contextlib

import segmentation_models_pytorch as smp
import torch
from torch import nn

from leukolab.config.experiment import Experiment
from leukolab.models.simple_cnn import SimpleCNN


class SmearNet(nn.Module):
    """Wraps a network so its forward pass returns the dict described above.

    With ``tta`` (test-time augmentation), evaluation-mode outputs are the mean
    over the eight symmetries of the square (four 90-degree rotations, each also
    mirrored; masks mapped back), one forward pass over all of them. Smears have
    no orientation, so this averages out what the network's filters get wrong
    about one. Training-mode passes see the image as given. A call's ``tta``
    overrides the setting for that pass alone: threads sharing one network each
    choose their own.
    """

    def __init__(self, network: nn.Module, task: str, tta: bool = False):
        super().__init__()
        self.network, self.task, self.tta = network, task, tta

    def forward(self, x: torch.Tensor, tta: bool | None = None) -> dict[str, torch.Tensor]:
        if self.training or not (self.tta if tta is None else tta) or x.shape[-1] != x.shape[-2]:
            return self._outputs(x)
        views = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
        views += [view.flip(-1) for view in views]
        out = self._outputs(torch.cat(views))
        merged = {}
        for key, value in out.items():
            parts = list(value.chunk(8))
            if key == "mask":
                parts = [torch.rot90(part.flip(-1) if i >= 4 else part, -(i % 4), (-2, -1)) for i, part in enumerate(parts)]
            merged[key] = torch.stack(parts).mean(0)
        return merged

    def _outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.network(x)
        if self.task == "classification":
            return {"logits": out}
        if self.task == "segmentation":
            return {"mask": out}
        mask, logits = out
        return {"mask": mask, "logits": logits}


@contextlib.contextmanager
def without_tta(model: nn.Module):
    """Switch a :class:`SmearNet`'s test-time augmentation off for a while (other modules pass through as they are);
    for a network no other thread uses meanwhile (else pass ``tta=False`` to the call)."""
    tta = getattr(model, "tta", None)
    if tta is not None:
        model.tta = False
    try:
        yield model
    finally:
        if tta is not None:
            model.tta = tta


class EncoderClassifier(nn.Module):
    """An smp encoder with global average pooling and a linear head."""

    def __init__(self, encoder: str, weights: str | None, num_classes: int, dropout: float):
        super().__init__()
        self.encoder = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=weights)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(self.encoder.out_channels[-1], num_classes))

    def forward(self, x):
        return self.head(self.encoder(x)[-1])


def build_model(experiment: Experiment, num_classes: int) -> SmearNet:
    """The network of an experiment config (see ``params/experiments/*.yaml``).

    Initial weights are drawn after seeding torch with the experiment's seed, so
    the same config always starts from the same network.
    """
    task, spec = experiment.task, experiment.model
    architecture, weights, dropout = spec.architecture, spec.encoder_weights, spec.dropout
    torch.manual_seed(experiment.seed)
    try:
        if architecture == "SimpleCNN":
            network = SimpleCNN(num_classes, width=spec.width, dropout=dropout)
        elif architecture == "EncoderClassifier":
            network = EncoderClassifier(spec.encoder, weights, num_classes, dropout)
        else:
            aux = {"classes": num_classes, "dropout": dropout} if task == "joint" else None
            decoder = {"decoder_channels": tuple(spec.decoder_channels)} if spec.decoder_channels else {}
            network = smp.create_model(architecture, encoder_name=spec.encoder, encoder_weights=weights,
                                       in_channels=3, classes=1, aux_params=aux, **decoder)
    except KeyError as error:
        raise ValueError(f"unknown architecture or encoder in {spec}: {error}") from None
    except Exception as error:
        if weights and _is_download_error(error):
            raise RuntimeError(
                f"could not download {weights!r} weights for encoder {spec.encoder!r}: this machine cannot reach "
                "the model hub. Set model.encoder_weights: null to train from scratch, or run where the hub is reachable "
                "(or with the weights already in the Hugging Face / torch cache)."
            ) from error
        raise
    if architecture in ("SimpleCNN", "EncoderClassifier") and task != "classification":
        raise ValueError(f"{architecture} only classifies; task {task!r} needs an smp segmentation architecture")
    return SmearNet(network, task, tta=experiment.inference.tta)


def _is_download_error(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(key in text for key in ("offline", "connection", "localentrynotfound", "url", "resolve", "hub", "download"))
