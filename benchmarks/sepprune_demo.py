"""SepPrune vs L1 vs random on the demo Conv-TasNet: same budget, same fine-tuning, several seeds.

    audiosep demo --out demo_out
    python benchmarks/sepprune_demo.py --ckpt demo_out/model.ckpt --data demo_out/data --seeds 0 1 2

Writes ``sepprune_demo.json`` (every run's report) and prints a markdown table: params, MACs,
batch-1 CPU latency on 4 s (median, interleaved with the unpruned model), validation SI-SNRi right
after surgery and after fine-tuning, as mean and spread (min..max) over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from audiosep.checkpoint import load_model
from audiosep.commands.prune import _datamodule
from audiosep.pruning.pipeline import METHODS, PruneSettings, prune_model


def summary(values: list[float], pattern: str = "{:.2f}") -> str:
    """``mean (min..max)`` of ``values``."""
    mean = statistics.fmean(values)
    return f"{pattern.format(mean)} ({pattern.format(min(values))}..{pattern.format(max(values))})"


def table(reports: list[dict]) -> str:
    """One row for the unpruned model, one per method (mean and spread over seeds)."""
    first = reports[0]
    lines = [
        "| model | params (M) | GMAC / s | latency 4 s (ms) | speed-up | SI-SNRi after surgery | SI-SNRi after fine-tuning | % of unpruned |",
        "|---|---|---|---|---|---|---|---|",
        f"| unpruned | {first['params_before'] / 1e6:.3f} | {first['macs_before'] / 1e9:.3f} | "
        f"{summary([1000 * r['latency_before_s'] for r in reports], '{:.1f}')} | 1.00x | - | "
        f"{summary([r['si_snri_before'] for r in reports])} | 100 % |",
    ]
    for method in METHODS:
        runs = [r for r in reports if r["method"] == method]
        if not runs:
            continue
        speedups = [r["latency_before_s"] / r["latency_after_s"] for r in runs]
        share = [100 * r["si_snri_after"] / r["si_snri_before"] for r in runs]
        lines.append(
            f"| {method} (seeds {','.join(str(r['seed']) for r in runs)}) | "
            f"{summary([r['params_after'] / 1e6 for r in runs], '{:.3f}')} | "
            f"{summary([r['macs_after'] / 1e9 for r in runs], '{:.3f}')} | "
            f"{summary([1000 * r['latency_after_s'] for r in runs], '{:.1f}')} | {summary(speedups)}x | "
            f"{summary([r['si_snri_pruned'] for r in runs])} | {summary([r['si_snri_after'] for r in runs])} | "
            f"{summary(share, '{:.0f}')} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True, help="the demo data folder (audiosep data demo --out ...)")
    parser.add_argument("--config", default="demo/convtasnet_tiny.yaml")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--search-steps", type=int, default=300)
    parser.add_argument("--multiple", type=int, default=8, help="widths rounded to a multiple of this")
    parser.add_argument("--work-dir", default="sepprune_runs")
    parser.add_argument("--out", default="sepprune_demo.json")
    args = parser.parse_args(argv)
    reports = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else []
    done = {(r["method"], r["seed"]) for r in reports}
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:  # resumable: finished runs are kept
                continue
            model, metadata = load_model(args.ckpt)
            settings = PruneSettings(
                method=method, target_macs=args.target_macs, search_steps=args.search_steps,
                finetune_epochs=args.finetune_epochs, seed=seed, accelerator="cpu", multiple=args.multiple,
            )  # fmt: skip
            datamodule = _datamodule(args.config, args.data)
            work_dir = Path(args.work_dir) / f"{method}-seed{seed}"
            _, report = prune_model(model, int(metadata["sample_rate"]), settings, datamodule, work_dir)
            reports.append(report.as_dict())
            Path(args.out).write_text(json.dumps(reports, indent=2))
            print(f"{method} seed {seed}: SI-SNRi {report.si_snri_after:.2f} dB "
                  f"(unpruned {report.si_snri_before:.2f}), "
                  f"latency {report.latency_before_s / report.latency_after_s:.2f}x", flush=True)  # fmt: skip
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
