"""``audiosep`` entry point: a thin layer over the typed library API.

``fit``/``validate``/``test`` go to LightningCLI (recipes are its YAML); every other command is a
module in :mod:`audiosep.commands` with ``add_arguments(parser)`` and ``run(args) -> int``, imported
only when that command runs so that ``audiosep --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from audiosep import __version__
from audiosep.errors import UserError, shown, user_message

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model from a recipe YAML (LightningCLI)",
    "validate": "validate a model from a recipe YAML (LightningCLI)",
    "test": "test a model from a recipe YAML; writes per-utterance scores (LightningCLI)",
}

# name -> (module, help). Groups map to a nested table of the same shape.
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "demo": ("audiosep.commands.demo", "build the built-in demo data, train, separate, report SI-SNRi"),
    "infer": ("audiosep.commands.infer", "separate audio files with a checkpoint"),
    "evaluate": ("audiosep.commands.evaluate", "SI-SNRi, SDRi (PESQ, STOI) on a LibriMix split; WER of mixture/separated/clean"),
    "transcribe": ("audiosep.commands.transcribe", "transcribe audio files with an ASR checkpoint"),
    "prune": ("audiosep.commands.prune", "SepPrune: remove channels under a MACs budget, fine-tune, report"),
    "export": ("audiosep.commands.export", "export a checkpoint to ONNX or TorchScript and check it"),
    "bench": ("audiosep.commands.bench", "params, MACs, latency, RTF, memory per backend, peers; `bench sweep`: Conv-TasNet X/R/H"),
    "data": {
        "demo": ("audiosep.commands.data_demo", "synthesise a small LibriMix-shaped demo set"),
        "librispeech": ("audiosep.commands.data_librispeech", "write LibriSpeech JSON-lines manifests"),
        "librimix": ("audiosep.commands.data_librimix", "generate LibriMix from the official metadata"),
    },
    "norms": {
        "study": ("audiosep.commands.norms", "train one separator with each norm on the same data; table, plots"),
    },
    "convert": {
        "speechbrain": ("audiosep.commands.convert_speechbrain", "import a SpeechBrain SepFormer folder"),
        "nemo": ("audiosep.commands.convert_nemo", "import a NeMo QuartzNet .nemo archive"),
    },
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _add_command(subparsers: argparse._SubParsersAction, name: str, module: str, help_text: str) -> None:
    if not _available(module):
        return
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(_module=module, _command_parser=parser)  # its own usage errors name its --help
    importlib.import_module(module).add_arguments(parser)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``audiosep: error:`` line (exit 2) naming the command's ``--help``,
    as the training commands' are, instead of the whole usage block first (reviewer). Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"audiosep: error: {' '.join(message.split())} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available command (Lightning commands are listed only)."""
    parser = OneLineErrorParser(
        prog="audiosep",
        description="Efficient speech separation and recognition.",
        epilog="Run `audiosep COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"audiosep {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, help_text in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    for name, entry in COMMANDS.items():
        if isinstance(entry, tuple):
            _add_command(subparsers, name, *entry)
            continue
        group = subparsers.add_parser(name, help=f"{name} commands", description=f"{name} commands")
        group_sub = group.add_subparsers(title=f"{name} commands", metavar="COMMAND")
        group.set_defaults(_group_parser=group)
        for sub_name, (module, help_text) in entry.items():
            _add_command(group_sub, sub_name, module, help_text)
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a job scheduler's time limit).

    Raised in the main thread so that every ``finally`` runs: atomic writes remove their temp files
    and folder locks are released (the default action killed the process and left ``.tmp`` files).
    A ``BaseException``, like ``KeyboardInterrupt``, so that no per-file ``except Exception`` takes
    it for one input's failure and goes on with the next.
    """


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) arrived. Not a ``KeyboardInterrupt``: Lightning turns that into ``sys.exit(1)``
    with its own message (and ignores Ctrl-C for the rest of the process), so a training step inside
    ``demo`` or ``norms study`` ended with exit 1 instead of 130."""


SIGNAL_EXCEPTIONS: dict[int, type[BaseException]] = {signal.SIGTERM: Terminated, signal.SIGINT: Interrupted}


def _raise_for_signal(signum: int, frame: object) -> None:
    raise SIGNAL_EXCEPTIONS[signum]


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT :class:`Interrupted` (main thread
    only; a signal the process was started ignoring, as a shell's background job ignores SIGINT, stays
    ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, _raise_for_signal)
        for sig in SIGNAL_EXCEPTIONS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:  # fmt: skip
    """Our own warnings as one ``audiosep: warning: ...`` line (Python's format adds our source path and a
    line of our code, which tell a user nothing); other libraries' as Python prints them."""
    if os.path.abspath(filename).startswith(PACKAGE_DIR):
        return f"audiosep: warning: {shown(message)}\n"
    return DEFAULT_FORMAT_WARNING(message, category, filename, lineno, line)


DEFAULT_FORMAT_WARNING = warnings.formatwarning


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, warnings are formatted by :func:`_format_warning`."""
    previous, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _silence_stdout() -> None:
    """Point stdout at the null device, so that Python's final flush into a closed pipe raises nothing more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured, replaced)
        pass


def _run_lightning(argv: list[str]) -> int:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from audiosep.training_cli import run_lightning_cli

    try:
        run_lightning_cli(argv)
    except SIGTERMException:  # a SystemExit without a code: a terminated `fit` exited 0, as if done (reviewer)
        raise Terminated from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``audiosep``; returns the exit code (0 ok, 1 failure, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            return _run_lightning(argv)
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse finds them at the top level: the command's own parser says so, naming its --help
            (getattr(args, "_command_parser", None) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
        if not hasattr(args, "_module"):
            (getattr(args, "_group_parser", None) or parser).print_help()
            return 2
        with signals_raise(), one_line_warnings():
            return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as err:
        print(f"audiosep: error: {shown(user_message(err))}", file=sys.stderr)  # a newline in a name: still one line
        return 1
    except BrokenPipeError:  # `audiosep ... | head` closed stdout: stop quietly, as a shell tool does
        _silence_stdout()
        return 141  # 128 + SIGPIPE
    except OSError as err:  # what the system refused (a read-only --out, a full disk): its file and reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"audiosep: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("audiosep: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("audiosep: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
