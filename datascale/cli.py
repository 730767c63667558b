"""The ``datascale`` console script and the parser framework every stage uses.

Each stage has a thin ``cli.py`` beside its code that registers its
subcommand through ``register_cli(subparsers)`` and imports the stage's code
only when the command runs, so that ``datascale --help`` stays fast. The
framework: ``subcommand`` (a parser bound to a function), ``add_config_args``
(``--config``, ``--set``, ``--force``, ``--print-config``), ``add_shortcut``
(flags that are shorthands for ``--set``: the later of a flag and a
``--set`` of the same key wins) and ``config_from_args``. User errors
(:class:`DatascaleError`) are printed as one line without a traceback;
config errors exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from datascale import __version__, console_log, lock
from datascale.config import config_keys, dump_yaml, load_config, to_dict
# ConfigPrinted lives in errors, not here: under `python -m datascale.cli` (the DeepSpeed launcher's
# way in) this module runs as __main__, and a class defined here would be two different classes.
from datascale.errors import (SKIP_LOG_ENV, SKIP_LOG_FILE, ConfigError, ConfigPrinted, DatascaleError,
                              out_of_space)

T = TypeVar("T")

# Modules that add a subcommand, in pipeline order (``register_cli(subparsers)``).
# Each is a thin module that imports its stage's code only when the command runs,
# so that `datascale --help` does not import torch.
COMMAND_MODULES = [
    "data_tools.synth.cli",
    "data_tools.shards.cli",
    "data_tools.subsets.cli",
    "scaling.pretrain.cli",
    "datascale.launch",
    "scaling.study.cli",
    "data_tools.dedup.cli",
    "scaling.finetune.cli",
    "scaling.selftrain.cli",
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
  dedup label      a sample of pairs to mark by hand (real data: calibrates the audit)
  finetune         detection / segmentation / pose, frozen or fine-tuned
  selftrain        a teacher run pseudo-labels unlabelled images; a student trains on both
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
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + flags + --set) as YAML and exit")


class _Shortcut(argparse.Action):
    """A flag that is a shorthand for ``--set KEY=VALUE``: it appends to the same list, in order."""

    def __init__(self, option_strings, dest, key: str, is_list: bool = False, repeat: bool = False, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.key, self.is_list, self.repeat = key, is_list, repeat

    def __call__(self, parser, namespace, values, option_string=None):
        if self.repeat:  # each use adds one item; the list of all of them so far is the value
            items = [*(getattr(namespace, self.dest, None) or []), str(values)]
            setattr(namespace, self.dest, items)
            text = json.dumps(items)
        elif self.is_list:  # JSON list of strings (valid YAML): "1.0" stays the text "1.0"
            setattr(namespace, self.dest, values)
            text = json.dumps([v.strip() for v in str(values).split(",") if v.strip()])
        else:
            setattr(namespace, self.dest, values)
            text = repr(values) if isinstance(values, float) else str(values)
        overrides = list(getattr(namespace, "overrides", None) or [])
        overrides.append(f"{self.key}={text}")
        setattr(namespace, "overrides", overrides)


def add_shortcut(parser: argparse.ArgumentParser, *flags: str, key: str, is_list: bool = False,
                 repeat: bool = False, **kwargs) -> None:
    """Add a flag that stands for ``--set KEY=VALUE`` (the one flag policy of every stage).

    The flag and ``--set`` append to one list in command-line order, so
    whichever comes later wins, and the resolved value is what lineage
    records. ``is_list`` flags take comma-separated values; a ``repeat`` flag
    may be given several times and sets the list of every value given. The
    flag is also stored on ``args`` under its own name, ``None`` when not given.
    """
    shorthand = f"shorthand for --set {key}=..."
    kwargs["help"] = f"{kwargs['help']} ({shorthand})" if kwargs.get("help") else shorthand
    parser.add_argument(*flags, action=_Shortcut, key=key, is_list=is_list, repeat=repeat, default=None, **kwargs)


def override_value(args: argparse.Namespace, key: str) -> str | None:
    """The text the last ``--set KEY=...`` (or its shortcut flag) gave ``key``, else None."""
    found = None
    for item in getattr(args, "overrides", None) or []:
        name, sep, value = item.partition("=")
        if sep and name.strip() == key:
            found = value.strip()
    return found


def config_from_args(schema: type[T], args: argparse.Namespace, source: Any = None,
                     defaults: Sequence[str] = ()) -> T:
    """Load ``schema`` from ``source`` (default: the ``--config`` file) plus ``--set`` overrides.

    ``defaults`` are ``KEY=VALUE`` pairs a command derives (e.g. from a file
    it was given); they apply before the user's flags and ``--set``, which
    win. With ``--print-config`` the resolved config is printed as YAML and
    the command ends there (exit 0), as LightningCLI's ``--print_config`` does.
    """
    overrides = [*defaults, *(getattr(args, "overrides", None) or [])]
    cfg = load_config(schema, args.config if source is None else source, overrides)
    if getattr(args, "print_config", False):
        print(dump_yaml(to_dict(cfg)), end="")
        raise ConfigPrinted()
    return cfg


def locks_output(parser: argparse.ArgumentParser, dest: str = "out",
                 unless: Callable[[argparse.Namespace], bool] | None = None) -> None:
    """Declare that the command writes the folder in ``args.<dest>``: :func:`main` holds its
    exclusive lock (:mod:`datascale.lock`) while the command runs, except when
    ``unless(args)`` is true (e.g. one part of a build that runs on many machines at once)."""
    parser.set_defaults(lock_dest=dest, lock_unless=unless)


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


# Libraries whose start-up chatter (faiss's instruction-set probing, the CPU build of
# DeepSpeed's communication op with "No CUDA runtime is found") is shown only with -v.
NOISY_LOGGERS = {"faiss.loader": logging.WARNING, "torch.utils.cpp_extension": logging.ERROR,
                 "DeepSpeed": logging.WARNING}


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger()
    if not root.handlers:  # the first call in this process (the study runs stages in-process)
        terminal = logging.StreamHandler()
        terminal.setLevel(level)
        terminal.setFormatter(logging.Formatter(console_log.LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(terminal)
        # The run folder's console.log keeps INFO even when -q quiets the terminal.
        root.setLevel(min(level, logging.INFO))
    for name, quiet_level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else max(level, quiet_level))


def _run(args: argparse.Namespace, folder) -> int | None:
    """Run the command; a full disk becomes a DataError that names the folder. Every item
    the command skips is named in ``FOLDER/skipped.tsv`` (:func:`datascale.errors.count_skip`)."""
    previous = os.environ.get(SKIP_LOG_ENV)
    if folder is not None:
        os.environ[SKIP_LOG_ENV] = str(Path(folder).resolve() / SKIP_LOG_FILE)
    try:
        return args.func(args)
    except (OSError, RuntimeError) as exc:
        full = out_of_space(exc, folder or os.getcwd())
        if full is None:
            raise
        raise full from exc
    finally:
        if previous is None:
            os.environ.pop(SKIP_LOG_ENV, None)
        else:
            os.environ[SKIP_LOG_ENV] = previous


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
    folder = getattr(args, getattr(args, "lock_dest", None) or "", None)
    try:
        unless = getattr(args, "lock_unless", None)
        dry = getattr(args, "print_config", False) or getattr(args, "dry_run", False)
        # Nothing written, or a folder shared by design: no lock.
        with lock.hold(None if dry or (unless and unless(args)) else folder, lock.command_line()):
            with console_log.keep(None if dry else folder, " ".join(["datascale", *argv])[:2000]):
                code = _run(args, folder)
    except ConfigPrinted:
        return 0
    except ConfigError as exc:
        print(f"datascale {args.command}: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DatascaleError as exc:
        print(f"datascale {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"datascale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `datascale study --dry-run | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
