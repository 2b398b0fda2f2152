"""Batch norms folded into their convolutions: the same outputs, only where the fold is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from leukolab.models.folding import fold_batch_norms
from leukolab.models.simple_cnn import SimpleCNN


def trained_looking(network: nn.Module) -> nn.Module:
    """``network`` with batch-norm statistics and affine parameters away from their initial 0 / 1, in eval mode."""
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.5, 0.5)
    return network.eval()


def test_simple_cnn_answers_the_same_with_its_batch_norms_folded():
    network = trained_looking(SimpleCNN(4))
    folded = copy.deepcopy(network)
    images = torch.rand(3, 3, 64, 64)
    assert fold_batch_norms(folded) == 4
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert [name for name, _ in folded.named_modules()] == [name for name, _ in network.named_modules()]
    with torch.no_grad():
        torch.testing.assert_close(folded(images), network(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["conv with bias, norm without affine", "strided grouped conv"])
def test_every_convolution_and_norm_variant_folds_exactly(case):
    conv = nn.Conv2d(4, 8, 3, bias=True) if "bias" in case else nn.Conv2d(4, 8, 3, stride=2, groups=2, bias=False)
    norm = nn.BatchNorm2d(8, affine="without affine" not in case)
    network = trained_looking(nn.Sequential(conv, norm, nn.ReLU()))
    folded = copy.deepcopy(network)
    images = torch.rand(2, 4, 16, 16)
    assert fold_batch_norms(folded) == 1
    with torch.no_grad():
        torch.testing.assert_close(folded(images), network(images), atol=1e-5, rtol=1e-4)


def test_norms_that_do_not_follow_a_convolution_or_use_batch_statistics_stay():
    after_relu = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8))
    batch_statistics = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    nested = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(nn.BatchNorm2d(8)))  # not neighbours in one Sequential
    for network in (after_relu, batch_statistics, nested):
        before = copy.deepcopy(network.eval())
        assert fold_batch_norms(network) == 0
        assert [type(module) for module in network.modules()] == [type(module) for module in before.modules()]
