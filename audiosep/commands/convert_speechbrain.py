"""``audiosep convert speechbrain DIR --out model.ckpt``: import a SpeechBrain separator folder.

DIR is a downloaded SpeechBrain SepFormer or RE-SepFormer model (``encoder.ckpt``,
``masknet.ckpt``, ``decoder.ckpt``, optionally ``hyperparams.yaml``, read as data only). The
output is an audiosep model file, ready for ``audiosep infer --ckpt model.ckpt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audiosep.commands.inputs import check_output_file
from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("folder", help="SpeechBrain model folder (encoder.ckpt, masknet.ckpt, decoder.ckpt)")
    parser.add_argument("--out", required=True, help="audiosep model file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.add_argument(
        "--model",
        choices=("auto", "sepformer", "resepformer"),
        default="auto",
        help="architecture (default: detected from masknet.ckpt)",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="sample rate the model was trained at (default: hyperparams.yaml's sample_rate)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert, save, and print what was written."""
    from audiosep.checkpoint import save_model
    from audiosep.convert.speechbrain import (
        CHECKPOINT_FILES,
        HYPERPARAMS_FILE,
        ConversionError,
        convert_speechbrain_folder,
    )

    if args.sample_rate is not None and args.sample_rate <= 0:
        raise UserError(f"--sample-rate must be positive, got {args.sample_rate}")
    reads = [Path(args.folder) / name for name in (*CHECKPOINT_FILES, HYPERPARAMS_FILE)]
    check_output_file(args.out, "--out", reads, "one of the SpeechBrain files", args.overwrite)
    try:
        model, metadata = convert_speechbrain_folder(args.folder, args.model, args.sample_rate)
    except ConversionError as err:
        raise UserError(str(err)) from err
    try:
        save_model(model, args.out, metadata)
    except OSError as err:
        raise UserError(f"cannot write {args.out}: {err}") from err
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out}: {type(model).__name__}, {num_params / 1e6:.2f} M parameters, "
        f"{metadata['sample_rate']} Hz"
    )
    return 0
