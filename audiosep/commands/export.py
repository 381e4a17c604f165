"""``audiosep export --ckpt CKPT --format onnx|torchscript [--out F]``: export, then prove the file.

After writing, the exported file is run (ONNX Runtime, or ``torch.jit.load``) at batch 1 and 2
on three lengths that are a multiple of no stride (the longest 16 s, the chunk ``audiosep infer``
runs), and, for separators, once more with a silent row (digital silence), and compared with the
PyTorch model; the max abs error of each is printed, and above ``--atol`` (scaled by each row's peak,
or each log-prob's own magnitude, where that exceeds 1) nothing is written and the exit code is 1.
QuartzNet checkpoints export with their log-mel front end (waveform + lengths in, log-probs out).

Heavy imports (torch, the exporters) happen in :func:`run`, so ``audiosep --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from audiosep.commands.inputs import check_output_file
from audiosep.errors import UserError, one_line

FORMATS = ("onnx", "torchscript")
DEFAULT_ATOL = 1e-4  # audiosep.export.DEFAULT_ATOL, repeated so that --help imports no torch
DEFAULT_OPSET = 18  # audiosep.export.DEFAULT_OPSET


def _lengths(value: str) -> list[int]:
    try:
        lengths = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sample counts, got {value!r}") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sample counts, got {value!r}")
    return lengths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``audiosep export``."""
    parser.add_argument("--ckpt", required=True, help="audiosep model file or Lightning .ckpt")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument(
        "--out", default=None,
        help="file to write (default: CKPT's name with .onnx or .torchscript.pt); replaced if it exists",
    )  # fmt: skip
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL,
        help="largest allowed difference from PyTorch, scaled by a separator row's peak (a log-prob's own value) beyond 1 "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, >= 18 (default: %(default)s)"
    )
    parser.add_argument(
        "--check-lengths", type=_lengths, default=None, metavar="N[,M...]",
        help="samples per row of the checks (default: primes near 0.3 s, 0.5 s and 16 s)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-rate", type=int, default=None, help="the model's rate, for a checkpoint that records none"
    )
    parser.add_argument(
        "--keep-failed", action="store_true",
        help="keep a file that fails the check as OUT.failed (for debugging) instead of removing it",
    )  # fmt: skip


def default_output(ckpt: Path, format: str) -> Path:
    """``model.ckpt`` -> ``model.onnx`` / ``model.torchscript.pt`` (never the checkpoint's own name)."""
    return ckpt.with_name(ckpt.stem + (".onnx" if format == "onnx" else ".torchscript.pt"))


def load_for_export(ckpt: Path, sample_rate: int | None) -> tuple[Any, Any, int, dict[str, Any]]:
    """``(model, front end or None, sample rate, extra metadata)`` from an audiosep checkpoint.

    An ASR checkpoint is read the way ``audiosep transcribe`` reads it, so that its front end and
    vocabulary are checked against the model; the vocabulary goes into the exported file.
    """
    from audiosep.checkpoint import CheckpointError, load_model
    from audiosep.models import QuartzNet
    from audiosep.transcriber import Transcriber

    features, extra = None, {}
    try:
        model, metadata = load_model(ckpt)
        if isinstance(model, QuartzNet):
            transcriber = Transcriber.from_checkpoint(ckpt)
            model, features = transcriber.model, transcriber.features
            extra = {"vocabulary": list(transcriber.tokenizer.vocabulary)}
    except CheckpointError as err:
        raise UserError(str(err)) from err
    recorded = metadata.get("sample_rate")
    if recorded is not None and sample_rate is not None and recorded != sample_rate:
        raise UserError(f"{ckpt}: the checkpoint says {recorded} Hz, --sample-rate says {sample_rate}")
    rate = recorded or sample_rate
    if rate is None:
        raise UserError(f"{ckpt}: the checkpoint records no sample_rate; pass --sample-rate")
    return model, features, rate, extra


def run(args: argparse.Namespace) -> int:
    """Export, check, print the report; a failed check raises (exit code 1)."""
    from audiosep.checkpoint import MAX_SAMPLE_RATE
    from audiosep.export import ExportCheckError, check_format, check_opset, export_model

    if args.sample_rate is not None and not 1 <= args.sample_rate <= MAX_SAMPLE_RATE:  # 1e9: a 64 GB check
        raise UserError(f"--sample-rate must be in 1..{MAX_SAMPLE_RATE}, got {args.sample_rate}")
    ckpt = Path(args.ckpt)
    out = Path(args.out) if args.out else default_output(ckpt, args.format)
    check_format(out, args.format)  # before loading: a missing onnxruntime fails fast
    check_opset(out, args.format, args.opset)
    if out.resolve() == ckpt.resolve():
        raise UserError(f"{out}: the export would replace the checkpoint; pass another --out")
    check_output_file(args.out or out, "--out")  # the text as given: Path() drops a trailing "/" (DIR/ wrote a file DIR)
    model, features, rate, extra = load_for_export(ckpt, args.sample_rate)
    try:
        report = export_model(
            model, out, args.format, rate, features=features, atol=args.atol, opset=args.opset,
            check_lengths=args.check_lengths, metadata=extra, keep_failed=args.keep_failed,
        )  # fmt: skip
    except ExportCheckError as err:
        print("\n".join(err.report.lines()))
        raise
    except OSError as err:  # the folder refused the file (a read-only or special file system)
        raise UserError(f"{out}: cannot write it ({err.strerror or one_line(err)})") from err
    print("\n".join(report.lines()))
    return 0
