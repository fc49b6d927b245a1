"""Shared fixtures: a tiny Conv-BN-Linear model, and a private model cache for the whole session."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Point ``CONDENSA_CACHE`` at a temporary directory so no test writes to the user's home.

    Subprocesses (CLI tests) inherit it through the environment.
    """
    previous = os.environ.get("CONDENSA_CACHE")
    os.environ["CONDENSA_CACHE"] = str(tmp_path_factory.mktemp("condensa-cache"))
    yield os.environ["CONDENSA_CACHE"]
    if previous is None:
        os.environ.pop("CONDENSA_CACHE", None)
    else:
        os.environ["CONDENSA_CACHE"] = previous


TINY_INPUT_SHAPE = (2, 3, 8, 8)


def make_tiny(seed: int = 0) -> nn.Module:
    """conv1(3->8)-bn1-relu-conv2(8->16)-bn2-relu-pool-flatten-fc1(16->12)-relu-fc2(12->10).

    BatchNorm affine parameters and running statistics are randomized so that masking a channel
    of a norm changes the output (a fresh norm has weight 1, bias 0).
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            bn1=nn.BatchNorm2d(8),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            bn2=nn.BatchNorm2d(16),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc1=nn.Linear(16, 12),
            relu3=nn.ReLU(),
            fc2=nn.Linear(12, 10),
        )
    )
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture()
def tiny() -> nn.Module:
    """A fresh tiny Conv-BN-Linear model (eval mode, seeded)."""
    return make_tiny()


@pytest.fixture()
def tiny_input() -> torch.Tensor:
    return torch.randn(TINY_INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def digits():
    """The embedded digits splits."""
    from condensa.data import digits_splits

    return digits_splits()


@pytest.fixture(scope="session")
def digits_reference(digits):
    """A trained digits CNN (cached in the session's model cache)."""
    from condensa.models.reference import train_reference
    from condensa.recovery import TrainConfig

    return train_reference("digits_cnn", {}, digits, TrainConfig(epochs=30, lr=3e-3), data_key={"name": "digits"},
                           log=lambda *_: None)
