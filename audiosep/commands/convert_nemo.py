"""``audiosep convert nemo MODEL.nemo --out model.ckpt``: import a NeMo QuartzNet/Jasper CTC model."""

from __future__ import annotations

import argparse
from pathlib import Path

from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "archive", metavar="MODEL.nemo", help="NeMo archive (model_config.yaml + model_weights.ckpt)"
    )
    parser.add_argument(
        "--out", required=True, help="audiosep checkpoint to write (for `audiosep transcribe`)"
    )


def run(args: argparse.Namespace) -> int:
    from audiosep.convert.nemo import convert_nemo_file

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give the checkpoint a file name")
    if out.resolve() == Path(args.archive).resolve():
        raise UserError(f"--out {out}: would replace the NeMo archive; pass another --out")
    try:
        convert_nemo_file(args.archive, out)
    except OSError as err:
        raise UserError(f"cannot convert {args.archive} to {out}: {err}") from err
    print(f"wrote {out}")
    return 0
