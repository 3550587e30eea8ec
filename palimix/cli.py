"""The `palimix` command line.

Each subcommand lives in its own module `palimix/commands/<module>.py` that defines

    HELP = "one line for `palimix --help`"
    def configure(parser: argparse.ArgumentParser) -> None: ...   # add flags
    def run(args: argparse.Namespace) -> int: ...                  # exit code

Command modules import heavy libraries (TensorFlow, JAX) inside `run`, so that
building the parser for `--help` stays fast. To add a command, write the module and
add one row to COMMANDS (and name it in WITHOUT_TENSORFLOW if it never loads them).

Every command takes `--verbose`; without it, the libraries' start-up and log noise is
kept off the terminal (palimix.quiet).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from palimix import quiet
from palimix.errors import PalimixError

# command name -> module in palimix.commands
COMMANDS = {
    "demo": "demo",
    "languages": "languages",
    "prompts": "prompts",
    "translate": "translate",
    "vocab": "vocab",
    "list": "list_tasks",
    "show": "show",
    "stats": "stats",
    "train": "train",
    "eval": "eval",
    "infer": "infer",
    "convert-checkpoint": "convert_checkpoint",
    "export": "export",
    "train-tokenizer": "train_tokenizer",
    "encode-images": "encode_images",
    "gin-path": "gin_path",
}
# Commands that never load TensorFlow or JAX: nothing to quiet, and they stay fast.
WITHOUT_TENSORFLOW = {"languages", "prompts", "gin-path"}


def build_parser() -> argparse.ArgumentParser:
    from palimix import __version__

    parser = argparse.ArgumentParser(
        prog="palimix",
        description="Multilingual multimodal task mixtures (the PaLI recipe) on SeqIO and T5X.",
    )
    parser.add_argument("--version", action="version", version=f"palimix {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"palimix.commands.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.add_argument("--verbose", action="store_true",
                         help=f"show the libraries' own log lines too (TensorFlow, XLA, SentencePiece, "
                              f"orbax, seqio); the same as {quiet.VERBOSE_ENV}=1")
        sub.set_defaults(_run=module.run)
    return parser


def _keep_tensorflow_off_accelerators() -> None:
    """TensorFlow only reads data in palimix; hidden from the GPUs it leaves their memory
    to JAX (as t5x.train does). Before TensorFlow runs anything: only then may it."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # Also for the processes a command starts.
    if args.command not in WITHOUT_TENSORFLOW:
        quiet.quiet_libraries()
        if argv is None:  # The palimix program itself (not a caller's process): its fd 2 and devices are ours.
            quiet.filter_native_stderr(quiet.SENTENCEPIECE_LOAD_LINES)
            _keep_tensorflow_off_accelerators()
    try:
        return int(args._run(args) or 0)
    except PalimixError as e:
        print(f"palimix {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
