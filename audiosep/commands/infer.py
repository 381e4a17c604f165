"""``audiosep infer --ckpt CKPT [--out-dir DIR] FILE...``: separate audio files."""

from __future__ import annotations

import argparse
import logging
import sys

from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, ...)")
    parser.add_argument("--ckpt", required=True, help="audiosep model file or Lightning .ckpt")
    parser.add_argument("--out-dir", default="separated", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--keep-model-rate", action="store_true", help="write at the model's sample rate, not the input's"
    )
    parser.add_argument("--chunk-seconds", type=float, default=16.0, help="chunk length for long files")
    parser.add_argument("--overlap-seconds", type=float, default=2.0, help="overlap between chunks")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("-v", "--verbose", action="store_true", help="log resampling and mixdown")


def run(args: argparse.Namespace) -> int:
    from audiosep.checkpoint import CheckpointError
    from audiosep.inference import ChunkConfig, Separator

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        chunk = ChunkConfig(args.chunk_seconds, args.overlap_seconds)
        separator = Separator.from_checkpoint(args.ckpt, chunk=chunk, device=args.device)
    except (CheckpointError, ValueError) as err:
        raise UserError(str(err)) from err
    failures = 0
    for file in args.files:
        try:
            written = separator.separate_file(file, args.out_dir, keep_model_rate=args.keep_model_rate)
        except UserError as err:
            failures += 1
            print(f"audiosep: error: {err}", file=sys.stderr)
            continue
        print(f"{file} -> {', '.join(str(p) for p in written)}")
    if failures:
        print(f"audiosep: {failures} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failures else 0
