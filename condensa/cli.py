"""The ``condensa`` command line: search, compress, eval, export, report.

Exit codes: 0 success; 2 bad input (a one-line message naming the field, no traceback);
1 any other failure.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from collections.abc import Sequence

from . import __version__, commands
from .config import load_config
from .errors import CondensaError, CondensaWarning


class UsageError(CondensaError):
    """A command-line syntax error (argparse's), shown as one line like every other bad input."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``--help`` still prints the usage, a mistake prints only
    ``condensa: error: <argument>: <what is wrong>`` (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(_usage_message(message, self.prog))


def _usage_message(message: str, prog: str) -> str:
    """argparse's message reworded to start with the argument it is about."""
    see = f"see '{prog} --help'"
    if message.startswith("argument "):  # "argument --seed: invalid int value: 'x'"
        return f"{message[len('argument '):]}; {see}"
    if message.startswith("the following arguments are required: "):
        names = message.split(": ", 1)[1]
        return f"{names}: required; {see}"
    if message.startswith("unrecognized arguments: "):
        names = message.split(": ", 1)[1]
        return f"{names}: unrecognized argument{'s' if ' ' in names else ''}; {see}"
    return f"{message}; {see}"

EXAMPLES = {
    "search": """
        examples:
          condensa search configs/digits.yaml
          condensa search configs/digits.yaml --out runs/digits --set search.budget=15
          condensa search configs/digits-2knob.yaml --device cpu --seed 1
        Re-running on the same --out folder resumes from its journal.""",
    "compress": """
        examples:
          condensa compress configs/digits-compress.yaml --out runs/fixed
          condensa compress configs/digits.yaml --set strategy.args.density=0.05""",
    "eval": """
        examples:
          condensa eval runs/digits-export
          condensa eval runs/digits-export --split val""",
    "export": """
        examples:
          condensa export runs/digits --out runs/digits-export""",
    "report": """
        examples:
          condensa report runs/digits        # writes runs/digits/report.md and report.html""",
}


TRUST_HELP = ("allow the folder's config.json / manifest.json to name code to import (a model.name such as "
              "pkg.module:function or file.py:function); without it such a folder is refused and nothing runs")


def _common(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        parser.add_argument("config", help="YAML config file")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                            help="override a config value (YAML syntax), repeatable")
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
        parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--out", help="output folder (default: the config's output.dir or runs/<config>-<command>)")
    parser.add_argument("--quiet", action="store_true", help="print only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="condensa", description="Programmable model compression for PyTorch.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "search": "find the best values of the strategy's open knobs under accuracy/mismatch constraints",
        "compress": "apply a concrete strategy, recover accuracy and measure",
        "eval": "evaluate an exported checkpoint on the configured data",
        "export": "write a packed checkpoint (safetensors + manifest + ONNX) from a result folder",
        "report": "write report.md and report.html with plots for a result folder",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text, epilog=textwrap.dedent(EXAMPLES[name]),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in ("search", "compress"):
            _common(sub)
        elif name == "export":
            sub.add_argument("run_dir", help="output folder of 'condensa search' or 'condensa compress'")
            _common(sub, config=False)
            sub.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
            sub.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
        elif name == "eval":
            sub.add_argument("export_dir", help="folder written by 'condensa export'")
            sub.add_argument("--split", choices=["val", "test"], default="test")
            sub.add_argument("--device", choices=["auto", "cpu", "cuda"])
            sub.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
            _common(sub, config=False)
        elif name == "report":
            sub.add_argument("run_dir", help="output folder of 'condensa search' or 'condensa compress'")
            _common(sub, config=False)
    return parser


def _version() -> str:
    return f"condensa {__version__}"


def _load(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    log = (lambda *_: None) if args.quiet else print
    if args.command == "compress":
        commands.compress(_load(args), out=args.out, config_path=args.config, quiet=args.quiet, log=log)
    elif args.command == "search":
        commands.run_search(_load(args), out=args.out, config_path=args.config, quiet=args.quiet, log=log)
    elif args.command == "export":
        commands.export(args.run_dir, out=args.out, onnx=not args.no_onnx, trust_code=args.trust_code, quiet=args.quiet,
                        log=log)
    elif args.command == "eval":
        commands.evaluate_export(args.export_dir, split=args.split, device=args.device, out=args.out,
                                 trust_code=args.trust_code, quiet=args.quiet, log=log)
    elif args.command == "report":
        commands.report(args.run_dir, out=args.out, quiet=args.quiet, log=log)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning as one line (Python's default adds the source line that raised it)."""
    text = " ".join(str(message).split())
    prefix = "condensa: warning: " if issubclass(category, CondensaWarning) else f"condensa: warning: {category.__name__}: "
    print(prefix + text, file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():  # the CLI's warning display stays out of Python callers of main()
        # Library deprecation chatter (torch.jit, onnx) is noise for CLI users; errors still surface.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        warnings.showwarning = _show_warning
        try:
            return run(build_parser().parse_args(argv))
        except CondensaError as error:
            message = " ".join(str(error).split())
            print(f"condensa: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("condensa: interrupted (a search resumes from its journal when re-run)", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
