"""Files on disk: atomic writes, and reads that never unpickle.

Writes go to a temporary file in the same folder, are flushed and fsynced, then ``os.replace``d
over the target (atomic on POSIX and Windows), and the folder is fsynced so the rename itself is
durable: a crash mid-write leaves the previous file intact. Reads refuse pickle files, because
unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError, CondensaError, ConfigError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """``default=`` hook of ``json.dumps`` for what JSON cannot hold (see :func:`jsonable`)."""
    return jsonable(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON: NaN and infinities (which JSON cannot hold, and which many
    readers reject) are written as ``null``."""
    atomic_write_text(path, json.dumps(finite(jsonable(obj)), indent=2, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def read_json_object(path: str | os.PathLike, error: type[CondensaError] = ConfigError) -> dict[str, Any]:
    """A JSON file that must hold an object; a truncated, non-UTF-8, non-JSON or non-object file
    raises ``error`` naming the file in one line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except OSError as problem:
        raise error(f"{path}: cannot read: {problem.strerror or problem}") from None
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte at offset {problem.start}); the file is damaged") from None
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem.msg} at line {problem.lineno}, column {problem.colno}); "
                    "the file is truncated or damaged") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got a {type(data).__name__}; the file is damaged") from None
    return data


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (tensors and arrays as lists, dataclass-like objects by ``to_dict``)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def canonical_json(obj: Any) -> bytes:
    """Sorted, compact JSON bytes: equal objects give equal bytes (for hashing)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


# -- reads that never unpickle ----------------------------------------------------------------

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")

HOW_TO_CONVERT = (
    "condensa never unpickles files, because loading a pickle can execute arbitrary code. Convert it "
    "once, in an environment you trust: `sd = torch.load(path, map_location='cpu', weights_only=True)` then "
    "`safetensors.torch.save_file(sd, 'model.safetensors')` (use it as model.checkpoint), or load it into "
    "the model and write a packed export with `condensa.export.save(model, out_dir, model_factory=...)`"
)


#: a safetensors header longer than this is not believed (the format caps it at 100 MB)
_MAX_HEADER = 100_000_000


def is_safetensors(data: bytes, size: int | None = None) -> bool:
    """True when ``data`` (a file's bytes, or at least its first ``8 + header`` bytes; ``size`` the
    whole file's length) has the safetensors structure: an 8-byte little-endian header length, then
    that many bytes of JSON describing an object. Checked before any pickle sniffing, because the
    length bytes can look like pickle magic (a 640-byte header starts with ``80 02``)."""
    size = len(data) if size is None else size
    if len(data) < 8:
        return False
    length = int.from_bytes(data[:8], "little")
    if not 2 <= length <= min(size - 8, _MAX_HEADER) or len(data) < 8 + length:
        return False
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict)


def is_safetensors_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                return False
            length = int.from_bytes(head, "little")
            if not 2 <= length <= min(size - 8, _MAX_HEADER):
                return False
            return is_safetensors(head + handle.read(length), size)
    except OSError:
        return False


def looks_pickled(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts like a pickle or a torch zip archive."""
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


def refuse_pickle(path: Path) -> None:
    raise CheckpointError(f"{path} is a pickle-based checkpoint (torch.save/pickle). {HOW_TO_CONVERT}")


def refuse_if_pickle(path: Path) -> None:
    """Raise :class:`CheckpointError` if ``path`` is a pickle file (by suffix or magic bytes);
    a file with the safetensors structure is never refused, whatever its name."""
    if is_safetensors_file(path):
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        head = b""
    if path.suffix in PICKLE_SUFFIXES or looks_pickled(head):
        refuse_pickle(path)
