"""The embedded default data set: scikit-learn's ``load_digits`` (1,797 real 8x8 images, 10 classes).

It ships inside scikit-learn, so it needs no download; a fixed, seeded, stratified split gives
train (60%), validation (20%) and test (20%). Pixels are scaled to [0, 1] and standardized with
the training split's mean and std. Every example keeps its index in the original data set so
reports can name exactly which examples a compressed model flipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
#: share of the 1,797 images held out for test (fixed, so test figures stay comparable)
TEST_FRACTION = 0.2


class IndexedTensorDataset(Dataset):
    """``(x, y)`` pairs plus ``indices``: each example's id in the original data set."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.inputs, self.labels, self.indices = inputs, labels, indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.inputs[i], self.labels[i]

    def head(self, n: int | None) -> IndexedTensorDataset:
        """The first ``n`` examples (all when ``n`` is None)."""
        return self if n is None else IndexedTensorDataset(self.inputs[:n], self.labels[:n], self.indices[:n])


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    #: what each class id means, for reports (the character or token of a language model's class)
    class_names: tuple[str, ...] | None = None


def digits_splits(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = TEST_FRACTION,
                  limit: int | None = None) -> Splits:
    """Stratified train/validation/test splits; ``val_fraction`` and ``test_fraction`` are shares
    of all 1,797 images, ``limit`` caps the examples of each split."""
    # scikit-learn costs 2 s of start-up that only the digits data needs
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    labels = data.target.astype(np.int64)
    ids = np.arange(len(labels))
    rest, test_ids = train_test_split(ids, test_size=test_fraction, stratify=labels, random_state=seed)
    try:
        train_ids, val_ids = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as error:  # too few images of a class on one side of the split
        raise DataError(f"data.val_fraction: {val_fraction} leaves a split too small for the 10 classes ({error})") from None
    mean, std = images[train_ids].mean(), images[train_ids].std()

    def make(split_ids: np.ndarray) -> IndexedTensorDataset:
        split_ids = np.sort(split_ids)
        x = torch.from_numpy((images[split_ids] - mean) / std).unsqueeze(1)
        return IndexedTensorDataset(x, torch.from_numpy(labels[split_ids]), torch.from_numpy(split_ids))

    return Splits(make(train_ids).head(limit), make(val_ids).head(limit), make(test_ids).head(limit), NUM_CLASSES, INPUT_SHAPE)
