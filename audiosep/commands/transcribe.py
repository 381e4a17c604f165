"""``audiosep transcribe --ckpt CKPT [--out FILE] INPUT...``: transcripts of audio files, folders and lists.

One line per transcribed file, ``PATH<TAB>TRANSCRIPT``, in input order, on stdout or in ``--out``
(written atomically at the end). Every input gets one outcome: transcribed, or one error line on
stderr naming the file and the reason (missing, corrupt, truncated, non-finite samples or model
output, ...); a silent file gets an empty transcript and a warning. A summary line ends the run;
the exit code is 1 if any input failed. Files longer than ``--segment-seconds`` are cut at quiet
moments and read in spans (:class:`audiosep.transcriber.Transcriber`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from audiosep.commands.inputs import (
    Input,
    Report,
    check_device,
    check_glob,
    check_output_file,
    collect_inputs,
    file_id,
    one_line_text,
    progress_bar,
    shown,
)
from audiosep.errors import UserError, one_line

FILES_PER_GROUP = 32  # files read and transcribed together (their segments batched by length)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="audio files (any sample rate; mixed to mono), folders (searched recursively) or @list.txt",
    )  # fmt: skip
    parser.add_argument(
        "--ckpt", required=True, help="ASR checkpoint (audiosep model file or Lightning .ckpt)"
    )
    parser.add_argument("--glob", metavar="PATTERN", default=None, help="files to take from folders, e.g. '*.flac'")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); >1 = beam search")
    parser.add_argument("--lm", default=None, help="KenLM .arpa/.bin for beam search (needs flashlight-text)")
    parser.add_argument("--lexicon", default=None, help="lexicon for a word LM: `word c h a r s |` per line")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="language model weight (default 0.5)")
    parser.add_argument("--word-score", type=float, default=0.0, help="score added per word (default 0)")
    parser.add_argument("--out", default=None, help="write the transcripts here instead of stdout")
    parser.add_argument("--batch-size", type=int, default=8, help="segments per forward pass (default 8)")
    parser.add_argument(
        "--segment-seconds", type=float, default=30.0,
        help="cut longer files at quiet moments into segments of at most this (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over files")
    parser.add_argument("-v", "--verbose", action="store_true", help="log resampling and mixdown")


def _load_transcriber(args: argparse.Namespace):  # noqa: ANN202 (lazy import keeps --help fast)
    from audiosep.checkpoint import CheckpointError
    from audiosep.transcriber import Transcriber, check_batching

    try:  # the options first, named as flags (they read as the checkpoint's fault once prefixed with its path)
        check_batching(args.batch_size, args.segment_seconds, ("--batch-size", "--segment-seconds"))
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        transcriber = Transcriber.from_checkpoint(
            args.ckpt,
            device=args.device,
            batch_size=args.batch_size,
            segment_seconds=args.segment_seconds,
            beam_size=args.beam_size,
            lm_path=args.lm,
            lexicon_path=args.lexicon,
            lm_weight=args.lm_weight,
            word_score=args.word_score,
        )
        transcriber.fit_to_available_memory()  # before any input is read: a model too large for this machine
        return transcriber
    except CheckpointError as err:
        raise UserError(str(err)) from err
    except ValueError as err:
        raise UserError(f"{args.ckpt}: {err}") from err


def _transcribe_group(group: list[Input], transcriber, report: Report) -> list[str]:  # noqa: ANN001
    """``PATH<TAB>TEXT`` lines of the readable inputs of ``group``; the others are reported."""
    from audiosep.audio_blocks import AudioError, CheckedAudio, cancelling_channels_warning
    from audiosep.transcriber import TRANSCRIBE_ONE_CHANNEL

    labels, segments = [], []
    for item in group:
        try:
            with CheckedAudio(item.path) as audio:
                transcriber.check_length(audio)
                cancelling = cancelling_channels_warning(item.label, audio.channels, audio.mixdown_loss_db,
                                                         TRANSCRIBE_ONE_CHANNEL)  # transcribed as silence (reviewer)
                if cancelling:
                    report.warning(cancelling)
                elif audio.silent:
                    report.warning(f"{item.label}: all samples are zero (silent); empty transcript")
                segments.append([] if audio.silent else transcriber.segments(audio))
        except AudioError as err:
            report.error(item.label, err.reason)
            continue
        except UserError as err:  # e.g. a sample rate the resampler refuses: this file only
            report.error(item.label, str(err))
            continue
        labels.append(item.label)
    transcribed = _texts(transcriber, labels, segments, report)
    report.written += len(transcribed)
    # shown(): a tab or newline in a file name, or in a checkpoint's vocabulary, would forge a PATH<TAB>TRANSCRIPT
    # line of another file
    return [f"{shown(label)}\t{one_line_text(text)}\n" for label, text in transcribed]


def _texts(transcriber, labels: list[str], segments: list, report: Report) -> list[tuple[str, str]]:  # noqa: ANN001
    """``(label, transcript)`` of each file; files whose model output is not finite, or that fail (out of
    memory), are reported instead.

    The files are transcribed together; only when that fails is each file run alone, to name the ones
    that failed (no transcript is printed for them: it would be garbage) and keep the others' (an
    allocation failure ended the run with a traceback and lost every transcript; reviewer).
    """
    from audiosep.transcriber import NonFiniteOutputError

    try:
        return list(zip(labels, transcriber.transcribe_segmented(segments), strict=True))
    except (NonFiniteOutputError, RuntimeError, MemoryError):
        pass
    transcribed = []
    for label, parts in zip(labels, segments, strict=True):
        try:
            transcribed.append((label, transcriber.transcribe_segmented([parts])[0]))
        except NonFiniteOutputError as err:
            report.error(label, str(err))
        except (RuntimeError, MemoryError) as err:
            report.error(label, f"transcription failed ({one_line(err, 200)})")
    return transcribed


def _write_transcripts(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` atomically; where that fails (a full disk), print it instead: never a lost result."""
    from audiosep.io import atomic_write_text

    try:
        atomic_write_text(out, text)
    except OSError as err:
        sys.stdout.write(text)
        raise UserError(f"--out {out}: cannot write it ({err.strerror or err}); the transcripts went to stdout") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    check_glob(args.glob)
    check_device(args.device)
    out = Path(args.out) if args.out is not None else None
    if out is not None:  # before any work: a bad --out found at the end lost every transcript
        lists = [argument[1:] for argument in args.inputs if argument.startswith("@") and len(argument) > 1]
        reads = [path for path in (args.ckpt, args.lm, args.lexicon, *lists) if path is not None]
        check_output_file(args.out, "--out", reads, "a file this command reads (--ckpt, --lm, --lexicon or a @list)")
    transcriber = _load_transcriber(args)
    report = Report()
    inputs = collect_inputs(args.inputs, args.glob, report)
    if out is not None and (out_id := file_id(out)) is not None and out_id in {file_id(i.path) for i in inputs}:
        raise UserError(f"--out {out} is one of the inputs; give another file name")
    lines: list[str] = []
    with progress_bar(len(inputs), enabled=not args.no_progress and len(inputs) > 1) as bar:
        for first in range(0, len(inputs), FILES_PER_GROUP):
            group = inputs[first : first + FILES_PER_GROUP]
            group_lines = _transcribe_group(group, transcriber, report)
            if out is None:
                sys.stdout.write("".join(group_lines))
                sys.stdout.flush()
            lines.extend(group_lines)
            bar.update(len(group))
    if out is not None:
        _write_transcripts(out, "".join(lines))
    report.summary("transcribed")
    return 1 if report.failed else 0
