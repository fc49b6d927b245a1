"""Turn a ``data`` config section into train/val/test splits.

``digits`` is embedded. ``cifar10`` and ``imagefolder`` read local files through torchvision and
never download (nothing can be fetched at run time on locked-down machines, and a silent
download would hide a wrong path); ``text`` is a character-level language-modeling set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .digits import Splits, digits_splits
from .text import text_splits, tokenizer_file

#: the data sets a config can name (``data.name``)
DATA_SETS = ("digits", "cifar10", "imagefolder", "text")
#: the data sets of images that ``data.image_size`` resizes
VISION_DATA_SETS = ("cifar10", "imagefolder")


class _Indexed(Dataset):
    """Wrap a dataset so it exposes ``indices`` (ids in the underlying data set)."""

    def __init__(self, base: Dataset, indices: list[int]) -> None:
        self.base, self.indices = Subset(base, indices), torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


def _split_train_val(train: Dataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator).tolist()
    n_val = int(round(fraction * len(train)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def _limit(ids: list[int], limit: int | None) -> list[int]:
    return ids if limit is None else ids[:limit]


def _require_dir(root: Any, name: str) -> Path:
    if not root:
        raise DataError(f"data.root: required for data.name={name} (a local folder; nothing is downloaded)")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root: {path} does not exist")
    return path


def _vision_splits(config: Any) -> Splits:
    # torchvision costs 2 s of start-up that only image folders need
    import torchvision
    from torchvision import transforms as T

    root = _require_dir(config.root, config.name)
    if config.name == "cifar10":
        size = config.image_size or 32
        normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        train_tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        eval_tf = T.Compose([T.Resize(size), T.ToTensor(), normalize])
        try:
            train_aug = torchvision.datasets.CIFAR10(str(root), train=True, transform=train_tf, download=False)
            train_eval = torchvision.datasets.CIFAR10(str(root), train=True, transform=eval_tf, download=False)
            test = torchvision.datasets.CIFAR10(str(root), train=False, transform=eval_tf, download=False)
        except RuntimeError as error:
            raise DataError(f"data.root: no CIFAR-10 found under {root} ({error}); extract cifar-10-python.tar.gz there") from None
        num_classes, shape = 10, (3, size, size)
    else:
        size = config.image_size or 224
        normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        eval_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), normalize])
        for sub in ("train", "val"):
            if not (root / sub).is_dir():
                raise DataError(f"data.root: expected {root}/{sub}/<class>/<image> (ImageFolder layout)")
        try:
            train_aug = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
            train_eval = torchvision.datasets.ImageFolder(str(root / "train"), transform=eval_tf)
            test = torchvision.datasets.ImageFolder(str(root / "val"), transform=eval_tf)
        except (FileNotFoundError, RuntimeError) as error:
            raise DataError(f"data.root: {root} holds no images in the ImageFolder layout ({error})") from None
        num_classes, shape = len(train_aug.classes), (3, size, size)
    if len(train_aug) == 0 or len(test) == 0:
        raise DataError(f"data.root: {root} holds an empty data set")
    train_ids, val_ids = _split_train_val(train_aug, config.val_fraction, config.split_seed)
    return Splits(
        _Indexed(train_aug, _limit(train_ids, config.limit)),
        _Indexed(train_eval, _limit(val_ids, config.limit)),
        _Indexed(test, _limit(list(range(len(test))), config.limit)),
        num_classes,
        shape,
        tuple(train_aug.classes),
    )


def load_splits(config: Any) -> Splits:
    """Splits for a :class:`condensa.config.DataConfig`."""
    if config.name == "digits":
        splits = digits_splits(seed=config.split_seed, val_fraction=config.val_fraction, limit=config.limit)
    elif config.name in ("cifar10", "imagefolder"):
        splits = _vision_splits(config)
    elif config.name == "text":
        splits = text_splits(config)
    else:
        raise DataError(f"data.name: unknown data set {config.name!r}")
    for name in ("train", "val", "test"):
        if len(getattr(splits, name)) == 0:
            raise DataError(f"data: the {name} split is empty")
    return splits


def splits_key(splits: Splits) -> dict[str, Any]:
    """What identifies user-supplied splits for caching reference models: a hash of their contents."""
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        data = getattr(splits, name)
        digest.update(f"{name}:{len(data)}".encode())
        tensors = [getattr(data, a, None) for a in ("inputs", "labels")]
        if all(isinstance(t, torch.Tensor) for t in tensors):
            for tensor in tensors:
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        else:  # any Dataset: hash its items (one pass, what training costs anyway)
            for i in range(len(data)):
                for item in data[i]:
                    digest.update(torch.as_tensor(item).detach().cpu().contiguous().numpy().tobytes())
    return {"name": "user-splits", "sha256": digest.hexdigest(), "num_classes": splits.num_classes}


def data_key(config: Any) -> dict[str, Any]:
    """What identifies the data for caching reference models."""
    key = {"name": config.name, "root": str(config.root), "split_seed": config.split_seed,
           "val_fraction": config.val_fraction, "limit": config.limit, "image_size": config.image_size,
           "seq_len": config.seq_len}
    if config.name == "text":
        key["labels"] = "every_position"  # references cached before per-position text are not reused
        if getattr(config, "tokenizer", None):  # the tokenizer's contents, not just its path
            file = tokenizer_file(config.tokenizer)
            key["tokenizer"] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else str(file)
    return key
