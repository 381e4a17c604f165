"""``audiosep prune --ckpt CKPT --config RECIPE.yaml --target-macs 0.5 --out pruned.ckpt``: SepPrune.

Scores channels (learned gates, L1 magnitude or random), removes the lowest under the MACs
budget, fine-tunes, and prints params / MACs / measured latency / SI-SNRi before and after. The
recipe is read only for its ``data:`` section, and only :class:`LibriMixDataModule` is accepted
there (a recipe is data: it never names code to run). ``--profile`` prints where the model spends
and stops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from audiosep.commands.inputs import check_output_file
from audiosep.errors import UserError

DATA_CLASSES = ("audiosep.data.librimix.LibriMixDataModule",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="separator checkpoint (audiosep model file or Lightning .ckpt)")
    parser.add_argument("--config", help="recipe YAML whose data: section gives the training/validation data")
    parser.add_argument("--data-root", help="override the recipe's data root (e.g. the folder `audiosep data demo` wrote)")
    parser.add_argument("--out", help="pruned model file to write")
    parser.add_argument("--target-macs", type=float, default=0.5, help="MACs to keep, fraction of the model's (0.5)")
    parser.add_argument("--method", choices=("sepprune", "l1", "random"), default="sepprune")
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tuning epochs (0: none)")
    parser.add_argument("--search-steps", type=int, default=300, help="gate-training batches (sepprune)")
    parser.add_argument("--threshold", type=float, default=0.7, help="gate threshold on sigmoid(score)")
    parser.add_argument("--multiple", type=int, default=8, help="round widths to a multiple of this (1: no rounding)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="Lightning checkpoints of the search and fine-tuning (resumable)")
    parser.add_argument("--latency-seconds", type=float, default=4.0, help="audio length of the latency check")
    parser.add_argument("--report", help="write the report (or with --profile the profile) as JSON here")
    parser.add_argument("--profile", action="store_true", help="print per-layer and per-group costs and stop")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu", "cuda"),
                        help="Lightning accelerator (default: %(default)s)")


def _datamodule(config: str, data_root: str | None):
    """The recipe's LibriMix data module (closed list of classes), root overridden if asked."""
    import yaml

    from audiosep.data.librimix import LibriMixDataModule
    from audiosep.training_cli import packaged_recipe

    path = Path(config) if Path(config).is_file() else packaged_recipe(config.removeprefix("recipes/"))
    if path is None:
        raise UserError(f"{config}: recipe not found (neither a file nor a recipe shipped with audiosep)")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{config}: not valid YAML ({err.__class__.__name__})") from err
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if not isinstance(data, dict) or data.get("class_path") not in DATA_CLASSES:
        raise UserError(f"{config}: its data: section must use one of {', '.join(DATA_CLASSES)}")
    init_args = dict(data.get("init_args") or {})
    if data_root:
        init_args["root"] = data_root
    try:
        return LibriMixDataModule(**init_args)
    except TypeError as err:
        raise UserError(f"{config}: bad data arguments ({err})") from err


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for out-of-range numbers (``nan`` and ``inf`` fail every range here) and a GPU
    accelerator without a GPU."""
    rules = [
        ("--target-macs", args.target_macs, 0.0 < args.target_macs <= 1.0, "in (0, 1]"),
        ("--threshold", args.threshold, 0.0 < args.threshold < 1.0, "in (0, 1)"),
        ("--finetune-epochs", args.finetune_epochs, 0.0 <= args.finetune_epochs < math.inf, "finite and >= 0"),
        ("--latency-seconds", args.latency_seconds, 0.0 <= args.latency_seconds < math.inf,
         "finite and >= 0 (0: no latency check)"),
        ("--search-steps", args.search_steps, args.search_steps >= 0, ">= 0"),
        ("--multiple", args.multiple, args.multiple >= 1, ">= 1"),
    ]
    for flag, value, ok, valid in rules:
        if not ok:
            raise UserError(f"{flag} must be {valid}, got {value}")
    if args.profile and args.latency_seconds == 0:
        raise UserError("--profile times the model: give --latency-seconds > 0")
    if args.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--accelerator {args.accelerator}: no CUDA device is available here (use auto or cpu)")


def check_output_paths(args: argparse.Namespace) -> None:
    """``--out`` and ``--report``: files, apart, and none of the files the command reads (checked before any work)."""
    reads = [path for path in (args.ckpt, args.config) if path]
    if args.out:
        check_output_file(args.out, "--out", reads, "a file this command reads (--ckpt or --config)")
    if args.report:
        written = [args.out] if args.out else []
        check_output_file(args.report, "--report", [*reads, *written], "a file this command reads or writes")


def run(args: argparse.Namespace) -> int:
    from audiosep.checkpoint import CheckpointError, load_model, save_model
    from audiosep.pruning.pipeline import PruneSettings, prune_model
    from audiosep.pruning.profile import format_profile, profile_model

    check_arguments(args)
    check_output_paths(args)
    try:
        model, metadata = load_model(args.ckpt)
    except CheckpointError as err:
        raise UserError(str(err)) from err
    sample_rate = int(metadata.get("sample_rate") or 8000)
    if args.profile:
        try:
            profile = profile_model(model, sample_rate, args.latency_seconds)
        except TypeError as err:
            raise UserError(f"{args.ckpt}: {err}") from err
        print(format_profile(profile))
        if args.report:
            _write_json(args.report, profile)
        return 0
    if not args.out:
        raise UserError("--out is required (the pruned model file)")
    datamodule = _datamodule(args.config, args.data_root) if args.config else None
    if datamodule is None and (args.method == "sepprune" or args.finetune_epochs > 0):
        raise UserError(f"--method {args.method} with fine-tuning needs --config (the data to train on)")
    settings = PruneSettings(
        method=args.method, target_macs=args.target_macs, threshold=args.threshold,
        search_steps=args.search_steps, finetune_epochs=args.finetune_epochs, multiple=args.multiple,
        seed=args.seed, accelerator=args.accelerator,
        data_source=f"{os.path.abspath(args.config)} {args.data_root}" if args.config else None,
    )  # fmt: skip
    work_dir = Path(args.work_dir or f"{args.out}.work")
    try:
        pruned, report = prune_model(model, sample_rate, settings, datamodule, work_dir, args.latency_seconds)
    except TypeError as err:
        raise UserError(f"{args.ckpt}: {err}") from err
    save_model(pruned, args.out, metadata | {"pruning": report.as_dict()})
    print(format_report(report))
    kept = report.macs_after / report.macs_before
    if abs(kept - args.target_macs) > 0.02:
        print(f"audiosep: warning: {100 * kept:.1f} % of the MACs kept for a target of {100 * args.target_macs:.1f} % "
              f"(widths are multiples of {args.multiple}; a smaller --multiple gets closer)", file=sys.stderr)  # fmt: skip
    if args.report:
        _write_json(args.report, report.as_dict())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _write_json(path: str, data: dict) -> None:
    from audiosep.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def format_report(report) -> str:  # noqa: ANN001 (PruneReport, imported lazily)
    """The final table: params, MACs, latency and SI-SNRi, before and after."""

    def cell(value: float | None, pattern: str) -> str:
        return "-" if value is None else pattern.format(value)

    rows = [
        ("params (M)", report.params_before / 1e6, report.params_after / 1e6, "{:.3f}"),
        ("GMAC / audio s", report.macs_before / 1e9, report.macs_after / 1e9, "{:.3f}"),
        ("latency (ms)", _ms(report.latency_before_s), _ms(report.latency_after_s), "{:.1f}"),
        ("val SI-SNRi (dB)", report.si_snri_before, report.si_snri_after, "{:.2f}"),
    ]
    lines = [f"| {report.method} (seed {report.seed}) | unpruned | pruned |", "|---|---|---|"]
    lines += [f"| {name} | {cell(a, p)} | {cell(b, p)} |" for name, a, b, p in rows]
    if report.latency_before_s and report.latency_after_s:
        lines.append(f"speed-up {report.latency_before_s / report.latency_after_s:.2f}x, "
                     f"MACs {report.macs_after / report.macs_before:.1%} of the original, "
                     f"SI-SNRi right after surgery {cell(report.si_snri_pruned, '{:.2f}')} dB")  # fmt: skip
    return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds
