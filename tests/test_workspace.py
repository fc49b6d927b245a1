"""The Python entry point: a workspace built from a model spec and the user's own data."""

from __future__ import annotations

import torch

import condensa
from condensa.data import IndexedTensorDataset, Splits


def blob_splits(seed: int = 0, per_class: int = 40) -> Splits:
    """Ten well-separated Gaussian blobs shaped like digits images (1x8x8): trivially learnable,
    and nothing like the digits a digits-trained model knows."""
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(10, 1, 8, 8, generator=g)

    def split(offset: int) -> IndexedTensorDataset:
        labels = torch.arange(10).repeat_interleave(per_class)
        inputs = centers[labels] + 0.5 * torch.randn(len(labels), 1, 8, 8, generator=g)
        return IndexedTensorDataset(inputs, labels, torch.arange(len(labels)) + offset)

    return Splits(split(0), split(1000), split(2000), 10, (1, 8, 8))


def test_workspace_trains_the_reference_on_the_data_given():
    splits = blob_splits()
    messages: list[str] = []
    workspace = condensa.workspace("digits_mlp", data=splits, train={"epochs": 5}, log=messages.append)
    assert workspace.splits is splits
    assert any("training reference" in m for m in messages)
    assert workspace.reference_predictions("test").accuracy > 95  # a digits-trained MLP scores ~10% here
    # the same data again: the cached reference (keyed by the data's contents) is reused
    messages.clear()
    again = condensa.workspace("digits_mlp", data=blob_splits(), train={"epochs": 5}, log=messages.append)
    assert not any("training reference" in m for m in messages)
    x = splits.test.inputs[:8]
    assert torch.equal(again.reference(x), workspace.reference(x))
