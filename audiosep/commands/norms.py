"""``audiosep norms study``: train one separator with each norm on the same data; table and plots."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``audiosep norms study``."""
    from audiosep.norm_study_settings import DEFAULT_NORMS, STUDY_PRESETS, StudySettings

    defaults = StudySettings(data="", out="")
    parser.add_argument("--data", required=True, help="LibriMix-shaped set (the folder `audiosep data demo` wrote)")
    parser.add_argument("--out", default="norm_study", help="output and resume folder (default: %(default)s)")
    parser.add_argument("--model", default=defaults.model,
                        help=f"registry preset or {', '.join(STUDY_PRESETS)} (default: %(default)s)")
    parser.add_argument("--norms", default=",".join(DEFAULT_NORMS),
                        help="comma-separated registry norms; the first is the baseline (default: %(default)s)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None,
                        help="training minutes per run, turned into one step budget for all (default: 3)")
    budget.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds per norm (default: %(default)s)")
    parser.add_argument("--baseline-seeds", type=int, default=defaults.baseline_seeds,
                        help="seeds of the first norm, to show the seed noise (default: %(default)s)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="model constructor override (YAML value), repeatable")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--segment", type=float, default=defaults.segment, help="training crop in seconds")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    parser.add_argument("--evals", type=int, default=defaults.evals, help="validation points per curve")
    parser.add_argument("--val-mixtures", type=int, default=defaults.val_mixtures,
                        help="validation mixtures of each curve point (the final score uses all)")
    parser.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction,
                        help="UN / PowerNorm warm-up as a fraction of the steps (default: %(default)s)")
    parser.add_argument("--rtf-seconds", type=float, default=defaults.rtf_seconds,
                        help="audio length of the RTF measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from audiosep.bench.run import parse_overrides
    from audiosep.errors import UserError
    from audiosep.norm_study import format_table, run_study
    from audiosep.norm_study_settings import StudySettings

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides, per_model = parse_overrides(args.override)
    except ValueError as err:
        raise UserError(f"--override: {err}") from None
    if per_model:
        raise UserError(f"--override: give KEY=VALUE, not MODEL.KEY=VALUE ({', '.join(per_model)})")
    if "norm" in overrides:
        raise UserError("--override norm=...: the study sets the norm; use --norms")
    settings = StudySettings(
        data=args.data, out=args.out, model=args.model, norms=[n for n in args.norms.split(",") if n],
        seeds=args.seeds, baseline_seeds=args.baseline_seeds,
        minutes=StudySettings.minutes if args.minutes is None and args.steps is None else args.minutes, steps=args.steps,
        overrides=overrides, batch_size=args.batch_size, segment=args.segment, lr=args.lr, evals=args.evals,
        val_mixtures=args.val_mixtures, warmup_fraction=args.warmup_fraction, rtf_seconds=args.rtf_seconds,
        progress=not args.no_progress,
    )  # fmt: skip
    report = run_study(settings)
    print(format_table(report))
    print(f"wrote {args.out}/table.md, results.json, results.csv, curves.png")
    return 0
