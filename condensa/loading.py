"""The one loader of user code named in configs: ``pkg.module:function`` or ``path/file.py:function``.

Model factories, schemes, objectives and losses are all named this way. Importing a module runs
its code, so only what the user wrote (a config given on the command line, a Python call) may
name one. Files condensa reads back (a checkpoint's manifest, a run folder's config.json) are
read inside :func:`reading_file`: there any spec is refused, naming the module it would have
imported, unless the caller passed ``trust_code=True`` (``--trust-code``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import CondensaError, ConfigError, UntrustedCodeError

#: the file whose contents are being acted on, while code named there is not trusted
_UNTRUSTED_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("condensa_untrusted_source", default=None)


@contextlib.contextmanager
def reading_file(source: str | Path, *, trust_code: bool = False) -> Iterator[None]:
    """Within this block, specs come from ``source``, a file condensa read: unless ``trust_code``,
    :func:`load_callable` refuses them instead of importing anything."""
    token = _UNTRUSTED_SOURCE.set(None if trust_code else str(source))
    try:
        yield
    finally:
        _UNTRUSTED_SOURCE.reset(token)

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_file_spec(spec: str) -> bool:
    """True for ``path/file.py`` or ``path/file.py:function``."""
    return spec.endswith(".py") or ".py:" in spec


def split_spec(spec: str, default_attr: str | None = None) -> tuple[str, str]:
    """``(module or file, attribute)`` of a spec; ``default_attr`` when a file spec names none."""
    if is_file_spec(spec):
        path, _, attr = spec.partition(".py")
        return path + ".py", attr.lstrip(":") or (default_attr or "")
    target, _, attr = spec.rpartition(":")
    return target, attr


def _import_file(path: Path, where: str, error: type[CondensaError]) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(f"condensa_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise error(f"{where}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def import_target(target: str, where: str, error: type[CondensaError] = ConfigError) -> ModuleType:
    """Import a module by dotted name or a ``.py`` file by path; errors name ``where`` in one line."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise error(f"{where}: file {target} does not exist")
    elif not _MODULE_NAME.match(target):
        raise error(f"{where}: '{target}' is neither a module name (pkg.module) nor a .py file")
    try:
        return _import_file(Path(target), where, error) if target.endswith(".py") else importlib.import_module(target)
    except SyntaxError as problem:
        raise error(f"{where}: {problem.filename or target} line {problem.lineno}: syntax error: {problem.msg}") from None
    except ImportError as problem:
        raise error(f"{where}: cannot import '{target}': {problem}") from None
    except Exception as problem:  # noqa: BLE001 - user module code runs here and may raise anything; one line
        raise error(f"{where}: importing '{target}' raised {type(problem).__name__}: {problem}") from problem


def load_callable(spec: str, where: str, *, default_attr: str | None = None,
                  error: type[CondensaError] = ConfigError, builtin: bool = False) -> Callable[..., Any]:
    """The callable named by ``spec`` (``pkg.module:function`` or ``path/file.py[:function]``).

    ``builtin``: condensa itself built the spec from a validated name (a shipped scheme), so it
    is allowed while reading a file.
    """
    if not isinstance(spec, str) or not spec:
        raise error(f"{where}: expected 'pkg.module:function' or 'path/file.py:function', got {spec!r}")
    target, attr = split_spec(spec, default_attr)
    if not target or not attr:
        raise error(f"{where}: expected 'pkg.module:function' or 'path/file.py:function', got {spec!r}")
    source = _UNTRUSTED_SOURCE.get()
    if source is not None and not builtin:
        kind = "file" if target.endswith(".py") else "module"
        raise UntrustedCodeError(
            f"{where}: {source} names code to run ('{spec}' would import {kind} '{target}'); condensa runs no code "
            "named in a file it reads unless you trust it: pass --trust-code (Python: trust_code=True)"
        )
    module = import_target(target, where, error)
    function = getattr(module, attr, None)
    if not callable(function):
        raise error(f"{where}: '{target}' has no callable '{attr}'")
    return function


__all__ = ["load_callable", "import_target", "is_file_spec", "split_spec", "reading_file"]
