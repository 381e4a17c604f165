"""Cost of our separators next to their peers' implementations, measured in the same run.

A thin caller of :mod:`audiosep.bench` (what ``audiosep bench --peers`` runs): each separator preset
through the ``eager`` backend (the plain model) and the ``prepared`` one (after
:func:`audiosep.optimize.prepare_for_inference`, as ``audiosep infer`` runs it), next to torchaudio's
Conv-TasNet (our Conv-TasNet then uses ``encoder_activation="linear"``, as torchaudio does) and
SpeechBrain's SepFormer / RE-SepFormer, all of one length timed interleaved in one process; peak
extra RAM in a fresh process per case. Prints the table, writes ``bench.json`` / ``bench.csv`` /
PNG plots to ``--out-dir``.

    python benchmarks/separator_cost.py --models conv_tasnet_base --lengths 1 4 16 --out-dir conv_tasnet_cost
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosep.bench import BenchSettings, format_table, run_bench, write_outputs  # noqa: E402

SEPARATORS = ("conv_tasnet_base", "sepformer_base", "resepformer_base", "tiny_sepformer_base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=SEPARATORS, default=list(SEPARATORS))
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="mixture seconds")
    parser.add_argument(
        "--backends", nargs="+", default=["eager", "prepared"], help="see `audiosep bench --help`"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds per length (default: adaptive)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="separator_cost", help="folder for bench.json, bench.csv, PNGs")
    args = parser.parse_args(argv)
    settings = BenchSettings(
        models=args.models, lengths=args.lengths, backends=args.backends, repeats=args.repeats,
        threads=args.threads, peers=True,
    )  # fmt: skip
    report = run_bench(settings)
    print(format_table(report))
    write_outputs(report, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
