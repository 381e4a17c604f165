"""The whole GPU inference benchmark in one command, under a time budget, into one JSON.

Every separator preset (and QuartzNet) through the eager and prepared backends, next to the peers'
implementations (torchaudio, SpeechBrain) when they are importable, at fp32, bf16 and fp16, batch 1
and 4, on 1, 4 and 16 s; peak memory is CUDA's max allocated. Models run one after the other; when
the budget (default 270 s) is spent, the remaining ones are listed under ``skipped`` instead of run,
so the script always finishes and always writes its JSON.

    python benchmarks/gpu_bench.py --out gpu_bench.json                 # on the GPU machine
    python benchmarks/gpu_bench.py --device cpu --models conv_tasnet_demo --lengths 0.25 \\
        --dtypes fp32 --batch-sizes 1 --out /tmp/gpu_bench.json         # the same code path on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosep.bench import BenchSettings, format_table, run_bench  # noqa: E402
from audiosep.io import atomic_write_text  # noqa: E402

MODELS = ("conv_tasnet_base", "sepformer_base", "resepformer_base", "tiny_sepformer_base", "quartznet_15x5")
SCHEMA = "audiosep.gpu_bench/1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="(default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registry presets, run in order")
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="seconds")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--backends", nargs="+", default=["eager", "prepared"], help="add compile if wanted")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting models after this")
    parser.add_argument("--time-budget", type=float, default=1.0, help="timed seconds per case")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", default="gpu_bench.json", help="the one JSON written")
    return parser.parse_args(argv)


def bench_one(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run_bench`` for one preset (its peers included), all dtypes, batch sizes and lengths."""
    settings = BenchSettings(
        models=[model], lengths=args.lengths, batch_sizes=args.batch_sizes, dtypes=args.dtypes,
        backends=args.backends, device=args.device, time_budget_s=args.time_budget,
        peers=not args.no_peers, memory=True, progress=False,
    )  # fmt: skip
    return run_bench(settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    reports: list[dict[str, Any]] = []
    skipped: list[str] = []
    for model in args.models:
        if reports and time.perf_counter() - start > args.budget_s:  # the first one always runs
            skipped.append(model)
            continue
        report = bench_one(model, args)
        print(format_table(report), flush=True)
        reports.append(report)
    summary = {
        "schema": SCHEMA,
        "wall_s": round(time.perf_counter() - start, 1),
        "skipped": skipped,
        "machine": reports[0]["machine"] if reports else None,
        "reports": reports,
    }
    atomic_write_text(Path(args.out), json.dumps(summary, indent=1))
    print(f"wrote {args.out} in {summary['wall_s']} s; skipped: {', '.join(skipped) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
