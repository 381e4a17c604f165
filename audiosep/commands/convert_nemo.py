"""``audiosep convert nemo MODEL.nemo --out model.ckpt``: import a NeMo QuartzNet/Jasper CTC model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "archive", metavar="MODEL.nemo", help="NeMo archive (model_config.yaml + model_weights.ckpt)"
    )
    parser.add_argument(
        "--out", required=True, help="audiosep checkpoint to write (for `audiosep transcribe`)"
    )


def run(args: argparse.Namespace) -> int:
    from audiosep.convert.nemo import convert_nemo_file

    convert_nemo_file(args.archive, args.out)
    print(f"wrote {args.out}")
    return 0
