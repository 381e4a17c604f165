"""``audiosep convert nemo MODEL.nemo --out model.ckpt``: import a NeMo QuartzNet/Jasper CTC model."""

from __future__ import annotations

import argparse
from pathlib import Path

from audiosep.commands.inputs import check_output_file
from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "archive", metavar="MODEL.nemo", help="NeMo archive (model_config.yaml + model_weights.ckpt)"
    )
    parser.add_argument(
        "--out", required=True, help="audiosep checkpoint to write (for `audiosep transcribe`)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from audiosep.convert.nemo import convert_nemo_file

    out = Path(args.out)
    check_output_file(out, "--out", [args.archive], "the NeMo archive", args.overwrite)
    try:
        convert_nemo_file(args.archive, out)
    except OSError as err:
        raise UserError(f"cannot convert {args.archive} to {out}: {err}") from err
    print(f"wrote {out}")
    return 0
