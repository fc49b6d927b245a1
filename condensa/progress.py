"""Progress display: a tqdm bar on a terminal, plain lines otherwise, nothing when quiet.

Long runs in CI logs or under ``nohup`` should produce readable lines, not carriage-return soup.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, desc: str, *, quiet: bool = False, unit: str = "it", leave: bool = True) -> None:
        self.total, self.desc, self.quiet, self.count = total, desc, quiet, 0
        self.tty = sys.stderr.isatty()
        self.bar = None
        if not quiet and self.tty:
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        text = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(text, refresh=True)
        elif not self.quiet:
            print(f"{self.desc} {self.count}/{self.total} {text}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
