"""Character-level language modeling on text that exists on every machine with Python: the
standard library's own source files (no download).

Each example is a window of ``seq_len`` characters whose labels are the next character at
*every* position (``[N, seq_len]``), as language models are judged: accuracy is next-character
accuracy over all positions, ``perplexity`` is exp(mean cross-entropy per character), and
mismatches are per-position predictions that changed. Characters outside printable ASCII map to ``?``.
"""

from __future__ import annotations

import string
import sysconfig
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .digits import IndexedTensorDataset, Splits

VOCAB = sorted(set(string.printable) - {"\x0b", "\x0c", "\r"})
UNKNOWN = "?"


def encode(text: str) -> torch.Tensor:
    lookup = {ch: i for i, ch in enumerate(VOCAB)}
    unknown = lookup[UNKNOWN]
    return torch.tensor([lookup.get(ch, unknown) for ch in text], dtype=torch.int64)


def stdlib_text(max_chars: int, files: int = 40) -> str:
    """The first ``max_chars`` characters of a fixed, sorted set of standard-library modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)[:files]
    text, size = [], 0
    for path in paths:
        chunk = path.read_text(encoding="utf-8", errors="replace")
        text.append(chunk)
        size += len(chunk)
        if size >= max_chars:
            break
    return "".join(text)[:max_chars]


def text_splits(config: Any) -> Splits:
    """Non-overlapping windows of ``config.seq_len`` characters from ``config.root`` (a text file or
    a folder of ``*.py``/``*.txt`` files) or, when root is unset, from the standard library.

    ``labels[i, t] = text[start_i + t + 1]``: a split of ``n`` windows holds ``n * seq_len``
    predictions and each character is predicted once. ``limit`` is the number of training windows
    (default 4000); validation and test are 15% of the windows each, contiguous blocks after the
    training block, so their text is unseen. Defaults (seq_len 64): 857 test windows = 54,848
    predictions.
    """
    seq_len = config.seq_len
    limit = config.limit or 4000
    n_wanted = -(-limit * 20 // 14)  # training is 70% of the windows
    total = n_wanted * seq_len + 1
    if config.root:
        root = Path(config.root).expanduser()
        if not root.exists():
            raise DataError(f"data.root: {root} does not exist")
        files = [root] if root.is_file() else sorted(list(root.rglob("*.py")) + list(root.rglob("*.txt")))
        text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)[:total]
    else:
        text = stdlib_text(total, files=160)
    ids = encode(text)
    n = max(0, (len(ids) - 1) // seq_len)
    if n < 10:
        where = f"data.root: {config.root}" if config.root else "data.seq_len: the standard library's text"
        raise DataError(f"{where} is too short for seq_len={seq_len}: {len(ids)} characters give {n} windows, "
                        "fewer than 10")
    windows = ids[: n * seq_len].reshape(n, seq_len)
    labels = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    # Contiguous blocks (not a shuffle), so validation/test text is unseen by training.
    n_test = n_val = max(1, int(n * 0.15))
    n_train = n - n_val - n_test
    idx = torch.arange(n)

    def part(lo: int, hi: int) -> IndexedTensorDataset:
        return IndexedTensorDataset(windows[lo:hi], labels[lo:hi], idx[lo:hi])

    return Splits(part(0, n_train), part(n_train, n_train + n_val), part(n_train + n_val, n), len(VOCAB), (seq_len,))
