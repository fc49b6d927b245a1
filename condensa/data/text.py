"""Language modeling on text that exists on every machine with Python: the standard library's own
source files (no download), or the user's text (``data.root``).

Each example is a window of ``seq_len`` tokens whose labels are the next token at *every*
position (``[N, seq_len]``), as language models are judged: accuracy is next-token accuracy over
all positions, ``perplexity`` is exp(mean cross-entropy per token), and mismatches are
per-position predictions that changed. Tokens are characters (printable ASCII; others map to
``?``) unless ``data.tokenizer`` names a Hugging Face tokenizer, as a pretrained ``hf:`` model
needs its own.
"""

from __future__ import annotations

import string
import sysconfig
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..extras import require
from .digits import IndexedTensorDataset, Splits

VOCAB = sorted(set(string.printable) - {"\x0b", "\x0c", "\r"})
UNKNOWN = "?"
#: characters read per token wanted with a tokenizer (subword tokens of code average 3-4)
CHARS_PER_TOKEN = 8


def encode(text: str) -> torch.Tensor:
    lookup = {ch: i for i, ch in enumerate(VOCAB)}
    unknown = lookup[UNKNOWN]
    return torch.tensor([lookup.get(ch, unknown) for ch in text], dtype=torch.int64)


def tokenizer_file(spec: str | Path) -> Path:
    """The ``tokenizer.json`` that ``data.tokenizer`` names: the file, or the one in a folder (as
    ``save_pretrained`` writes it)."""
    path = Path(spec).expanduser()
    return path / "tokenizer.json" if path.is_dir() else path


def load_tokenizer(spec: str | Path):
    """A Hugging Face fast tokenizer read from its ``tokenizer.json`` with the ``tokenizers``
    library: a JSON description, so nothing in the folder is unpickled or run
    (``tokenizer_config.json``'s ``auto_map`` is never looked at)."""
    file = tokenizer_file(spec)
    if not file.is_file():
        raise DataError(f"data.tokenizer: {file} does not exist; give a tokenizer.json or a folder holding one "
                        "(save_pretrained of a fast tokenizer writes it)")
    require("tokenizers")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"data.tokenizer: {file} is not a tokenizers JSON file: {str(error).splitlines()[0]}") from None


def tokenize(tokenizer, text: str, chunk_chars: int = 1 << 16) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, encoded in chunks of about ``chunk_chars``
    cut after a line end (a batch the tokenizer encodes in parallel). Only a whitespace run across
    a cut, once per chunk, may tokenize differently than in one piece."""
    chunks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end < 0 else end + 1
        chunks.append(text[start:end])
        start = end
    ids = [i for encoding in tokenizer.encode_batch(chunks, add_special_tokens=False) for i in encoding.ids]
    return torch.tensor(ids, dtype=torch.int64)


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
    """Non-overlapping windows of ``config.seq_len`` tokens from ``config.root`` (a text file or
    a folder of ``*.py``/``*.txt`` files) or, when root is unset, from the standard library.

    ``labels[i, t] = ids[start_i + t + 1]``: a split of ``n`` windows holds ``n * seq_len``
    predictions and each token is predicted once. ``limit`` is the number of training windows
    (default 4000); validation and test are 15% of the windows each, contiguous blocks after the
    training block, so their text is unseen. Defaults (seq_len 64): 857 test windows = 54,848
    predictions. ``config.tokenizer`` (a ``tokenizer.json`` or its folder) makes the tokens that
    tokenizer's; the number of classes is then its vocabulary size.
    """
    seq_len = config.seq_len
    limit = config.limit or 4000
    n_wanted = -(-limit * 20 // 14)  # training is 70% of the windows
    total = n_wanted * seq_len + 1
    tokenizer = load_tokenizer(config.tokenizer) if getattr(config, "tokenizer", None) else None
    unit = "characters" if tokenizer is None else "tokens"
    # a subword token covers a few characters: read enough text for ``total`` tokens, then cut
    chars = total if tokenizer is None else total * CHARS_PER_TOKEN
    if config.root:
        root = Path(config.root).expanduser()
        if not root.exists():
            raise DataError(f"data.root: {root} does not exist")
        files = [root] if root.is_file() else sorted(list(root.rglob("*.py")) + list(root.rglob("*.txt")))
        text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)[:chars]
    else:
        text = stdlib_text(chars, files=160)
    ids = encode(text) if tokenizer is None else tokenize(tokenizer, text)[:total]
    n = max(0, (len(ids) - 1) // seq_len)
    if n < 10:
        where = f"data.root: {config.root}" if config.root else "data.seq_len: the standard library's text"
        raise DataError(f"{where} is too short for seq_len={seq_len}: {len(ids)} {unit} give {n} windows, "
                        "fewer than 10")
    windows = ids[: n * seq_len].reshape(n, seq_len)
    labels = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    # Contiguous blocks (not a shuffle), so validation/test text is unseen by training.
    n_test = n_val = max(1, int(n * 0.15))
    n_train = n - n_val - n_test
    idx = torch.arange(n)

    def part(lo: int, hi: int) -> IndexedTensorDataset:
        return IndexedTensorDataset(windows[lo:hi], labels[lo:hi], idx[lo:hi])

    if tokenizer is None:
        names = tuple(display(ch) for ch in VOCAB)
    else:
        names = tuple(display(tokenizer.id_to_token(i) or "") for i in range(tokenizer.get_vocab_size()))
    return Splits(part(0, n_train), part(n_train, n_train + n_val), part(n_train + n_val, n), len(names), (seq_len,), names)


def display(token: str) -> str:
    """A character or token as a report shows it: whitespace made visible."""
    return token.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅"
