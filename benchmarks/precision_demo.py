"""bf16-mixed vs fp32 training of the demo Conv-TasNet (issue 12: "ends within 0.3 dB SI-SNRi").

Trains ``recipes/demo/convtasnet_tiny.yaml`` twice with ``audiosep fit``, same seed, same data, same
``--trainer.max_steps``, once per precision, then runs ``audiosep test`` on each run's final
``last.ckpt`` (not the best: the same step count for both) and writes one JSON with both test-set
SI-SNRi means, the difference, the seconds each run took and the non-finite steps it skipped.

    python benchmarks/precision_demo.py --data demo_out/data --out runs/precision --steps 1500

``--data`` is the folder ``audiosep data demo --out DIR`` wrote (``DIR/data`` for ``audiosep demo``);
it is built there when missing. Each run uses ``--threads`` CPU threads (default 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "demo/convtasnet_tiny.yaml"
PRECISIONS = ("32-true", "bf16-mixed")


def audiosep(*argv: str, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-m", "audiosep.cli", *argv], env=env, check=True)


def mean_column(path: Path, column: str) -> float:
    with path.open(newline="") as handle:
        values = [float(row[column]) for row in csv.DictReader(handle)]
    return sum(values) / len(values)


def nonfinite_steps(run_dir: Path) -> int | None:
    metrics = sorted(run_dir.rglob("metrics.csv"))
    if not metrics:
        return None
    with metrics[-1].open(newline="") as handle:
        values = [row.get("nonfinite_steps") for row in csv.DictReader(handle)]
    numbers = [float(v) for v in values if v not in (None, "")]
    return int(max(numbers)) if numbers else 0


def run(args: argparse.Namespace) -> dict:
    if not (args.data / "Libri2Mix").is_dir():
        audiosep("data", "demo", "--out", str(args.data), "--no-progress", threads=args.threads)
    results: dict = {"recipe": RECIPE, "seed": args.seed, "max_steps": args.steps, "threads": args.threads,
                     "data": str(args.data), "overrides": args.override, "runs": {}}
    overrides = [f"--{item}" for item in args.override]
    for precision in PRECISIONS:
        run_dir = args.out / precision
        start = time.perf_counter()
        audiosep("fit", "--config", RECIPE, f"--data.root={args.data}", f"--seed_everything={args.seed}",
                 f"--trainer.precision={precision}", f"--trainer.max_steps={args.steps}",
                 "--trainer.max_time=null", "--trainer.max_epochs=-1", "--trainer.enable_progress_bar=false",
                 f"--trainer.default_root_dir={run_dir}", *overrides, threads=args.threads)
        train_s = time.perf_counter() - start
        last = max(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        scores = run_dir / "test_scores.csv"
        audiosep("test", "--config", RECIPE, f"--data.root={args.data}", f"--ckpt_path={last}",
                 f"--model.test_csv={scores}", f"--trainer.precision={precision}",
                 f"--trainer.default_root_dir={run_dir}", "--trainer.enable_progress_bar=false", *overrides,
                 threads=args.threads)
        results["runs"][precision] = {
            "test_si_snri_db": round(mean_column(scores, "si_snri"), 3),
            "test_sdri_db": round(mean_column(scores, "sdri"), 3),
            "train_seconds": round(train_s, 1),
            "nonfinite_steps": nonfinite_steps(run_dir),
            "checkpoint": str(last),
        }
    fp32, bf16 = (results["runs"][p]["test_si_snri_db"] for p in PRECISIONS)
    results["bf16_minus_fp32_db"] = round(bf16 - fp32, 3)
    results["within_0_3_db"] = abs(bf16 - fp32) <= 0.3
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="demo set folder (built when missing)")
    parser.add_argument("--out", type=Path, required=True, help="where the two runs and results.json go")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run (default 1500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for fit and test, e.g. data.segment=1.0 (repeatable)")
    args = parser.parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
