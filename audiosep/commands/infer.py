"""``audiosep infer --ckpt CKPT [--out-dir DIR] INPUT...``: separate audio files, folders and lists.

Every input gets exactly one outcome: written (``IN -> OUT...`` on stdout), skipped (its outputs
exist; ``--overwrite`` redoes it) or failed (``audiosep: error: <file>: <reason>`` on stderr); a
summary line ends the run, and the exit code is 0 only if nothing failed.

Output names mirror each input's path relative to the inputs' common parent folder, so
``a/x.wav`` and ``b/x.wav`` give ``OUT/a/x_s1.wav`` and ``OUT/b/x_s1.wav``. Inputs whose outputs
would still collide (``x.wav`` and ``x.flac`` side by side) and outputs that would replace an input
file fail before anything is written for them.

Heavy imports (torch, the model code) happen in :func:`run`, so ``audiosep --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from audiosep.commands.inputs import (
    Input,
    Report,
    check_device,
    check_glob,
    collect_inputs,
    file_id,
    progress_bar,
    shown,
)
from audiosep.errors import UserError
from audiosep.io import (
    OUTPUT_SUBTYPES,
    directory_lock,
    folders_to_make,
    input_output_subtype,
    remove_empty_folders,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="audio files (wav, flac, ogg, ...), folders (searched recursively) or @list.txt "
        "(one path per line, relative to the list's folder; blank lines and # comments skipped)",
    )  # fmt: skip
    parser.add_argument("--ckpt", required=True, help="audiosep model file or Lightning .ckpt")
    parser.add_argument("--out-dir", default="separated", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--glob", metavar="PATTERN", default=None,
        help="files to take from folders, matched against the path below the folder, e.g. '*.flac' "
        "(default: every suffix soundfile reads)",
    )  # fmt: skip
    parser.add_argument(
        "--channel", type=int, default=None, metavar="N",
        help="separate channel N (0-based) instead of the mixdown of all channels",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="redo inputs whose outputs exist (default: skip)"
    )
    parser.add_argument(
        "--keep-model-rate", action="store_true", help="write at the model's sample rate, not the input's"
    )
    parser.add_argument(
        "--subtype", choices=OUTPUT_SUBTYPES, default="auto",
        help="sample format of the output WAVs; auto: float inputs give FLOAT (level kept), 24- and 32-bit "
        "ones PCM_24, others PCM_16 (integer outputs are scaled as one so that none clips; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--chunk-seconds", type=float, default=None, help="chunk length for long files (default: 16)")
    parser.add_argument("--overlap-seconds", type=float, default=None, help="overlap between chunks (default: 2)")
    parser.add_argument(
        "--max-memory", type=float, default=None, metavar="MIB",
        help="pick the chunk length so that memory stays under MIB (process RAM on CPU, allocated memory "
        "on CUDA), measured on this model; replaces --chunk-seconds",
    )  # fmt: skip
    parser.add_argument("--chunk-batch", type=int, default=None,
                        help="chunks of a long file per forward pass (faster on a GPU; default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--no-optimize", action="store_true",
        help="run the plain model, not the prepare_for_inference() transform (for comparison)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (files, chunks of long files)")
    parser.add_argument(
        "--stream", type=block_ms, default=None, metavar="BLOCK_MS", nargs="?", const=20.0,
        help="causal Conv-TasNet or RE-SepFormer only: separate through the stateful stream in blocks of BLOCK_MS "
        "(default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=["fp32", "int8"], default="fp32",
        help="int8: dynamic int8 linear and pointwise layers on CPU (faster on large models; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log resampling, mixdown and skipped files"
    )


log = logging.getLogger("audiosep.infer")


def block_ms(text: str) -> float:
    """``--stream``'s optional BLOCK_MS; a path there is an input that argparse took for the value."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of milliseconds (to give inputs right after --stream, put -- before them)"
        ) from None


@dataclass
class Plan:
    input: Input
    name: Path  # output name below --out-dir, without ``_s<k>.wav``
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    output_of: str | None = None  # the input this file is an output of: not separated again


def plan_outputs(inputs: list[Input], out_dir: Path, num_sources: int) -> list[Plan]:
    """Output names mirrored below ``out_dir``; collisions and outputs that are inputs become errors."""
    from audiosep.inference import output_paths

    absolute = [Path(os.path.abspath(item.path)) for item in inputs]
    try:
        common = Path(os.path.commonpath([str(path.parent) for path in absolute])) if absolute else None
    except ValueError:  # e.g. different drives: names alone, collisions are caught below
        common = None
    plans = []
    for item, path in zip(inputs, absolute, strict=True):
        parent = path.parent.relative_to(common) if common is not None else Path()
        name = parent / path.stem
        plans.append(Plan(item, name, output_paths(out_dir, name, num_sources)))

    # An input that is another input's output (out-dir == input folder, second run; found in the
    # folder or named by a shell glob) is that output, not a new input: if its comment names that
    # input's path (the input may have changed since: then it is a stale output, redone with
    # --overwrite). A file that only has an output's name (a user's recording, or an output of a
    # version before the comment) is separated and protected like any input.
    existing_outputs = {}
    for index, plan in enumerate(plans):
        for output in plan.outputs:
            if (identity := file_id(output)) is not None:
                existing_outputs.setdefault(identity, index)
    for index, plan in enumerate(plans):
        owner = existing_outputs.get(file_id(plan.input.path), index)
        if owner != index and names_source(plan.input.path, plans[owner].input.path):
            plan.output_of = plans[owner].input.label
    separated = [plan for plan in plans if plan.output_of is None]

    # Two inputs writing the same output name (case-insensitively, for case-insensitive disks).
    owners: dict[str, list[Plan]] = {}
    for plan in separated:
        for output in plan.outputs:
            owners.setdefault(os.path.abspath(output).casefold(), []).append(plan)
    for group in owners.values():
        if len(group) > 1:
            for plan in group:
                others = ", ".join(shown(other.input.label) for other in group if other is not plan)
                plan.error = plan.error or (
                    f"its outputs would collide with those of {others} (same name below --out-dir); "
                    "rename one, or separate them into different --out-dir folders"
                )

    # Never replace an input file.
    input_ids = {key: plan for plan in separated if (key := file_id(plan.input.path)) is not None}  # gone: no key
    for plan in separated:
        for output in plan.outputs:
            victim = input_ids.get(file_id(output))  # None where the output does not exist (or cannot)
            if victim is not None and plan.error is None:
                plan.error = (
                    f"output {shown(output)} would overwrite the input file {shown(victim.input.label)}"
                )
    return plans


def output_origin(output: str | os.PathLike, source: str | os.PathLike, settings: str) -> str:
    """What ``output``'s WAV comment says of it: ``this`` result (``source`` as it is now, ``settings``),
    ``other settings`` (this input, another model or options; an output of an older version carries
    none), or ``foreign`` (anything else). The input may have been reached through a symbolic link since
    (:meth:`audiosep.inference.SourceTag.same_file`)."""
    from audiosep.inference import SourceTag, source_tag, written_from

    written = SourceTag.parse(written_from(output) or "")
    current = SourceTag.parse(source_tag(source, settings))
    if written is None or current is None or not written.same_file(current):
        return "foreign"
    return "this" if written.settings == current.settings else "other settings"


def names_source(output: str | os.PathLike, source: str | os.PathLike) -> bool:
    """Whether ``output`` (a file found where ``source``'s output goes) is ``source``'s output: its comment
    names ``source``'s path (``source`` may have changed since), or ``source`` as it is now under another
    path (its folder linked or renamed since: :meth:`audiosep.inference.SourceTag.moved_from`)."""
    from audiosep.inference import SourceTag, source_prefix, source_tag, written_from

    tag = written_from(output) or ""
    if tag.startswith(source_prefix(source)):
        return True
    written, current = SourceTag.parse(tag), SourceTag.parse(source_tag(source))
    return written is not None and current is not None and written.moved_from(current)


def process(plan: Plan, separator, args: argparse.Namespace, out_dir: Path, report: Report) -> None:
    from audiosep.inference import SeparationError
    from audiosep.io import remove_temp_files

    label = plan.input.label
    if plan.output_of is not None:
        report.skip_output(label, plan.output_of)
        return
    if plan.error:
        report.error(label, plan.error)
        return
    try:  # a name too long for the file system, or an input removed since it was found
        present = [output for output in plan.outputs if output.exists() or output.is_symlink()]
        not_files = [output for output in present if not output.is_file()]
        subtype = input_output_subtype(plan.input.path, args.subtype)
        settings = separator.output_settings(args.keep_model_rate, args.channel, subtype)
        checked = [] if args.overwrite else present  # --overwrite replaces them whatever they are
        origins = {output: output_origin(output, plan.input.path, settings) for output in checked}
    except OSError as err:
        report.error(label, f"cannot check its outputs ({err.strerror or err}); nothing written for it")
        return
    if not_files:
        report.error(label, f"output path {shown(not_files[0])} exists and is not a file")
        return
    if present and not args.overwrite:
        foreign = [output for output, origin in origins.items() if origin == "foreign"]
        other = [output for output, origin in origins.items() if origin == "other settings"]
        if foreign:
            report.error(
                label,
                f"{shown(foreign[0])} exists and was not written from this input (another file, or this "
                "file before it changed); --overwrite replaces it",
            )
        elif other:
            report.error(
                label,
                f"{shown(other[0])} was separated from this input with another model or other options "
                "(--ckpt, --dtype, --stream, --channel, --keep-model-rate, --subtype); --overwrite replaces it",
            )
        elif len(present) == len(plan.outputs):
            report.skip(label, plan.outputs)
        else:
            report.error(
                label,
                f"{len(present)} of its {len(plan.outputs)} outputs exist already ({shown(present[0])}); "
                "--overwrite replaces them",
            )
        return
    for folder in {output.parent for output in plan.outputs}:  # what a killed earlier run left
        remove_temp_files(folder, {output.name for output in plan.outputs if output.parent == folder})
    try:
        written = separator.separate_file(
            plan.input.path, out_dir, keep_model_rate=args.keep_model_rate,
            relative_name=plan.name, channel=args.channel, warn=report.warning, settings=settings,
            subtype=subtype,  # resolved once above, for the settings digest and the file alike
        )  # fmt: skip
    except SeparationError as err:
        report.error(label, err.reason)
    except UserError as err:
        report.error(label, str(err))
    except OSError as err:
        where = err.filename or plan.outputs[0].parent
        report.error(label, f"cannot write outputs in {where} ({err.strerror or err}); nothing written for it")
    except sf.LibsndfileError as err:  # a full disk is an OSError (write_sources asks while its temp files fill it)
        report.error(label, f"separation failed (LibsndfileError: {err.error_string})")
    except MemoryError:
        report.error(label, "out of memory; try a smaller --chunk-seconds")
    except Exception as err:  # noqa: BLE001 - one bad file must not end the batch with a traceback
        first_line = (str(err).splitlines() or [""])[0]
        report.error(label, f"separation failed ({type(err).__name__}: {first_line})")
    else:
        report.wrote(label, written)


def check_chunk_options(args: argparse.Namespace) -> None:
    """Refuse chunking options with ``--stream``, which separates the whole file block by block and would
    ignore them (its output is the model's on the whole file, not the chunked one's), and a bad --max-memory."""
    if args.max_memory is not None and not (math.isfinite(args.max_memory) and args.max_memory > 0):
        raise UserError("--max-memory takes a positive number of MiB")
    if args.chunk_seconds is not None and not (math.isfinite(args.chunk_seconds) and args.chunk_seconds > 0):
        raise UserError(f"--chunk-seconds takes a positive number of seconds, got {args.chunk_seconds:g}")
    if args.overlap_seconds is not None and not (math.isfinite(args.overlap_seconds) and args.overlap_seconds > 0):
        raise UserError(f"--overlap-seconds takes a positive number of seconds, got {args.overlap_seconds:g}")
    if args.chunk_batch is not None and args.chunk_batch < 1:  # 0 was taken as 1 silently (reviewer)
        raise UserError(f"--chunk-batch takes a number of chunks of at least 1, got {args.chunk_batch}")
    chunking = {"--chunk-seconds": args.chunk_seconds, "--overlap-seconds": args.overlap_seconds,
                "--chunk-batch": args.chunk_batch, "--max-memory": args.max_memory}  # fmt: skip
    given = [flag for flag, value in chunking.items() if value is not None]
    if args.stream is not None and given:
        raise UserError(f"{given[0]} does not apply to --stream (the stream separates the whole file block by block)")


def load_separator(args: argparse.Namespace):
    from audiosep.checkpoint import CheckpointError
    from audiosep.inference import ChunkConfig, SeparationError, Separator

    check_chunk_options(args)
    check_device(args.device)  # as evaluate: one line, not the driver's message
    defaults = ChunkConfig()
    try:
        chunk = ChunkConfig(defaults.seconds if args.chunk_seconds is None else args.chunk_seconds,
                            defaults.overlap_seconds if args.overlap_seconds is None else args.overlap_seconds)  # fmt: skip
    except ValueError as err:  # named no flag (reviewer)
        raise UserError(f"--chunk-seconds / --overlap-seconds: {err}") from None
    try:
        separator = Separator.from_checkpoint(
            args.ckpt, chunk=chunk, device=args.device, optimize=not args.no_optimize, dtype=args.dtype,
            stream_block_ms=args.stream, chunk_batch=1 if args.chunk_batch is None else args.chunk_batch,
        )
        separator.fit_chunk_to_available_memory()  # before any input is read: a model too large for this machine
        if args.max_memory is not None:
            chunk = separator.fit_chunk_to_memory(args.max_memory)
            print(
                f"audiosep: --max-memory {args.max_memory:g} MiB: chunks of {chunk.seconds:.1f} s "
                f"(overlap {chunk.overlap_seconds:.2f} s)",
                file=sys.stderr,
            )
        return separator
    except SeparationError as err:  # the model, not an input
        raise UserError(f"{args.ckpt}: {err}") from err
    except (CheckpointError, ValueError) as err:
        raise UserError(str(err)) from err
    except (RuntimeError, AssertionError) as err:
        first_line = (str(err).splitlines() or [""])[0]
        raise UserError(f"cannot run the model on --device {args.device} ({first_line})") from err


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.channel is not None and args.channel < 0:
        raise UserError(f"--channel {args.channel}: channels are numbered from 0")
    check_glob(args.glob)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} exists and is not a folder")
    separator = load_separator(args)
    report = Report()
    inputs = collect_inputs(args.inputs, args.glob, report, exclude=out_dir)
    plans = list(plan_outputs(inputs, out_dir, separator.num_sources))
    separator.progress = not args.no_progress
    # One run per output folder: a second one deleted the first's scratch files and failed it mid-file.
    missing = folders_to_make(out_dir)
    lock = directory_lock(out_dir, "--out-dir") if plans else contextlib.nullcontext()
    with lock, progress_bar(len(plans), enabled=not args.no_progress and len(plans) > 1) as bar:
        for plan in plans:
            process(plan, separator, args, out_dir, report)
            bar.update()
    remove_empty_folders(missing)  # made for the lock: left only if something was written in it
    report.summary()
    return 1 if report.failed else 0
