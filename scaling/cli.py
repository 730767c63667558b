"""The ``datascale`` console script: one subcommand per stage.

Each stage module registers its own subcommand through ``register_cli``
(keeping heavy imports such as torch inside the command function, so that
``datascale --help`` stays fast). User errors (:class:`DatascaleError`) are
printed as one line without a traceback; config errors exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any, Callable, Sequence, TypeVar

from datascale import __version__
from datascale.config import config_keys, load_config
from datascale.errors import ConfigError, DatascaleError

T = TypeVar("T")

# Modules that add a subcommand, in pipeline order (``register_cli(subparsers)``).
COMMAND_MODULES = [
    "data_tools.synth",
    "data_tools.shards",
    "data_tools.subsets",
    "scaling.pretrain",
    "scaling.launch",
    "scaling.study",
    "data_tools.dedup.cli",
    "scaling.finetune",
    "analysis.cli",
]

PIPELINE = """\
pipeline:
  synth            make the synthetic JFT-like world (or bring your own images)
  shards write     images -> WebDataset shards in hash-rank order
  subsets make     nested random subsets (10M < 30M < 100M < 300M)
  pretrain         DeepSpeed multi-label pretraining on a subset
  dedup index      FAISS index of the pretraining pool
  dedup audit      near-duplicates of downstream test sets; cleaned test sets
  finetune         detection / segmentation / pose, frozen or fine-tuned
  results collect  run folders -> results.parquet
  fit, plot        scaling curves with uncertainty -> results/report.md
  study            all of the above from one study config
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse parser whose errors exit with code 2 and a one-line message."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised via CLI tests
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None,
                    schema: type | None = None) -> None:
    """Add the shared ``--config``, ``--set KEY=VALUE`` and ``--force`` options.

    ``default_config`` is a path or built-in name (``world/demo``). When a
    ``schema`` is given, its valid keys are listed in the help text.
    """
    parser.add_argument("-c", "--config", default=default_config,
                        help="YAML config: a path, or a built-in name such as 'world/demo'")
    keys = f" Valid keys: {', '.join(config_keys(schema))}." if schema else ""
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set seed=3." + keys)
    parser.add_argument("--force", action="store_true",
                        help="replace an output folder that was made with a different config")


def flag_overrides(args: argparse.Namespace, keys: dict[str, str],
                   lists: Sequence[str] = ()) -> list[str]:
    """``--set`` overrides for a stage's shortcut flags: ``{flag attribute: config key}``.

    Flags left unset (None or "") give nothing; flags named in ``lists`` are
    comma-separated and become JSON lists of strings (valid YAML, so "1.0"
    stays the text "1.0"); floats keep their repr. The result goes after
    the user's ``--set`` values, so flags win, and is recorded in lineage.
    """
    import json
    out = []
    for attr, key in keys.items():
        value = getattr(args, attr, None)
        if value is None or value == "":
            continue
        if attr in lists:
            value = json.dumps([v.strip() for v in str(value).split(",") if v.strip()])
        elif isinstance(value, float):
            value = repr(value)
        out.append(f"{key}={value}")
    return out


def config_from_args(schema: type[T], args: argparse.Namespace) -> T:
    """Load ``schema`` from the ``--config`` file plus ``--set`` overrides."""
    return load_config(schema, args.config, args.overrides)


def subcommand(subparsers: Any, name: str, func: Callable[[argparse.Namespace], int | None],
               help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Create a subcommand parser bound to ``func(args) -> exit code``."""
    parser = subparsers.add_parser(name, help=help, description=description or help,
                                   formatter_class=_Formatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="datascale",
                     description="Data-scaling studies for vision, after Sun et al. 2017.",
                     epilog=PIPELINE, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"datascale {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info is the default, -vv debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datascale`` console script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # for stages that re-launch themselves on N ranks
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"datascale {args.command}: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DatascaleError as exc:
        print(f"datascale {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"datascale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `datascale ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
