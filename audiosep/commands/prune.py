"""``audiosep prune --ckpt CKPT --config RECIPE.yaml --target-macs 0.5 --out pruned.ckpt``: SepPrune.

Scores channels (learned gates, L1 magnitude or random), removes the lowest under the MACs
budget, fine-tunes, and prints params / MACs / measured latency / SI-SNRi before and after. The
recipe is read only for its ``data:`` section, and only :class:`LibriMixDataModule` is accepted
there (a recipe is data: it never names code to run), read as ``audiosep fit`` reads it (YAML aliases
refused, the data arguments type-checked). Every input is checked before the work folder is claimed.
``--profile`` prints where the model spends and stops.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from audiosep.commands.inputs import check_output_file
from audiosep.errors import UserError, one_line

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
    parser.add_argument("--latency-seconds", type=float, default=4.0, help="audio length of the latency check (0: no latency check; default: %(default)s)")
    parser.add_argument("--report", help="write the report (or with --profile the profile) as JSON here")
    parser.add_argument("--profile", action="store_true", help="print per-layer and per-group costs and stop")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu", "cuda"),
                        help="Lightning accelerator (default: %(default)s)")


def recipe_file(config: str) -> Path:
    """The recipe ``--config`` names: a file, else a recipe shipped with audiosep (never relative to the cwd)."""
    from audiosep.training_cli import packaged_recipe

    path = Path(config) if Path(config).is_file() else packaged_recipe(config.removeprefix("recipes/"))
    if path is None:
        raise UserError(f"{config}: recipe not found (neither a file nor a recipe shipped with audiosep)")
    return path


def recipe_sha256(config: str) -> str:
    """Digest of the recipe's bytes: a recipe edited in place is another recipe (its path is not its identity)."""
    from audiosep.io import file_sha256

    return file_sha256(recipe_file(config))


def _read_recipe(config: str) -> Any:
    """The recipe as YAML, read like ``audiosep fit`` reads it: aliases (``*name``) refused, not expanded."""
    from audiosep.training_cli import read_recipe_yaml

    return read_recipe_yaml(recipe_file(config))


def _data_arguments(config: str, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` checked against LibriMixDataModule's signature as ``audiosep fit`` checks them (names, types)."""
    from jsonargparse import ArgumentParser

    from audiosep.data.librimix import LibriMixDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LibriMixDataModule)
    try:
        return dict(parser.parse_object(init_args))
    except Exception as err:  # noqa: BLE001 (jsonargparse's ArgumentError and the type errors under it)
        raise UserError(f"{config}: bad data arguments ({one_line(str(err))})") from err


def _datamodule(config: str, data_root: str | None):
    """The recipe's LibriMix data module (closed list of classes), root overridden if asked."""
    from audiosep.data.librimix import LibriMixDataModule

    recipe = _read_recipe(config)
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if not isinstance(data, dict) or data.get("class_path") not in DATA_CLASSES:
        raise UserError(f"{config}: its data: section must use one of {', '.join(DATA_CLASSES)}")
    init_args = data.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise UserError(f"{config}: data.init_args must be a mapping")
    init_args = dict(init_args) | ({"root": data_root} if data_root else {})
    arguments = _data_arguments(config, init_args)
    if arguments["batch_size"] < 1:
        raise UserError(f"{config}: data batch_size must be >= 1, got {arguments['batch_size']}")
    segment = arguments["segment"]
    if segment is not None and not 0.0 < segment < math.inf:  # NaN fails too
        raise UserError(f"{config}: data segment must be finite seconds > 0 (or null: whole utterances), got {segment}")
    try:
        return LibriMixDataModule(**arguments)
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
        ("--search-steps", args.search_steps, args.search_steps >= (1 if args.method == "sepprune" else 0),
         ">= 1 with --method sepprune (its scores are learned in these steps)" if args.method == "sepprune" else ">= 0"),
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


def check_output_paths(args: argparse.Namespace, work_dir: Path | None = None, data_dirs: tuple[Path, ...] = ()) -> None:
    """``--out`` and ``--report``: files, apart, and none of the files the command reads (checked before any work).

    With ``work_dir`` and ``data_dirs`` also: neither is written inside the work folder (its checkpoints and
    record) or the data folders, the work folder is not inside them, and not inside a data folder either.
    """
    reads = [path for path in (args.ckpt, args.config) if path]
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--report", args.report)) if path]
    if args.out:
        check_output_file(args.out, "--out", reads, "a file this command reads (--ckpt or --config)")
    if args.report:
        written = [args.out] if args.out else []
        check_output_file(args.report, "--report", [*reads, *written], "a file this command reads or writes")
    for flag, path in outputs:
        _check_folder_of(flag, path)
        for folder, what in [*((d, "the data folder") for d in data_dirs), *([(work_dir, "the work folder")] if work_dir else [])]:
            if _inside(Path(path), folder):
                raise UserError(f"{flag} {path}: inside {what} {folder}; pass another {flag}")
    if work_dir is not None:
        for flag, path in outputs:
            if _inside(work_dir, Path(path)):
                raise UserError(f"--work-dir {work_dir}: the same as or inside {flag} {path}; pass another --work-dir")
        for folder in data_dirs:
            if _inside(work_dir, folder):
                raise UserError(f"--work-dir {work_dir}: inside the data folder {folder}; pass another --work-dir")


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (both resolved: symlinks and ``..`` followed)."""
    return path.resolve().is_relative_to(folder.resolve())


def _check_folder_of(flag: str, path: str) -> None:
    """One-line error when a folder on the way to ``path`` is a file (it could never be written)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pass another {flag}")
            return


def data_folders(datamodule: Any) -> tuple[Path, ...]:
    """The folder every file the data module reads lies in (``.../wav8k/min``: metadata and audio): never written."""
    from audiosep.data.librimix import resolve_librimix_dir

    return (resolve_librimix_dir(datamodule.root, datamodule.n_src, datamodule.sample_rate, datamodule.mode),)


def model_sample_rate(metadata: dict, ckpt: str, datamodule: Any) -> int:
    """The checkpoint's sample rate; without one, the data's (or 8000 Hz), said on stderr rather than assumed silently."""
    rate = metadata.get("sample_rate")
    if rate is not None:
        return int(rate)
    fallback = int(datamodule.sample_rate) if datamodule is not None else 8000
    source = "the data's" if datamodule is not None else "assumed"
    print(f"audiosep: warning: {ckpt}: no sample_rate in its metadata; {source} {fallback} Hz is used", file=sys.stderr)
    return fallback


def run(args: argparse.Namespace) -> int:
    """Check every input, then prune, fine-tune, measure and write ``--out`` (and ``--report``)."""
    from audiosep.checkpoint import save_model
    from audiosep.pruning.latency import unreliable_speedup
    from audiosep.pruning.pipeline import PruneSettings, prune_model
    from audiosep.pruning.profile import format_profile, profile_model

    check_arguments(args)
    if args.profile:
        check_output_paths(args)
        model, metadata = _load(args.ckpt)
        sample_rate = model_sample_rate(metadata, args.ckpt, None)
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
    work_dir = Path(args.work_dir or f"{args.out}.work")
    check_output_paths(args, work_dir, data_folders(datamodule) if datamodule is not None else ())
    model, metadata = _load(args.ckpt)
    sample_rate = model_sample_rate(metadata, args.ckpt, datamodule)
    settings = PruneSettings(
        method=args.method, target_macs=args.target_macs, threshold=args.threshold,
        search_steps=args.search_steps, finetune_epochs=args.finetune_epochs, multiple=args.multiple,
        seed=args.seed, accelerator=args.accelerator,
        recipe_sha256=recipe_sha256(args.config) if args.config else None,
    )  # fmt: skip
    try:
        pruned, report = prune_model(  # checks the inputs (naming these files) before it claims the work folder
            model, sample_rate, settings, datamodule, work_dir, args.latency_seconds,
            model_name=args.ckpt, data_name=args.config or "the data",
        )  # fmt: skip
    except TypeError as err:
        raise UserError(f"{args.ckpt}: {err}") from err
    save_model(pruned, args.out, metadata | {"sample_rate": sample_rate, "pruning": report.as_dict()})
    print(format_report(report))
    kept = report.macs_after / report.macs_before
    if abs(kept - args.target_macs) > 0.02:
        why = ("every pruned group is at its narrowest; the rest (encoder, decoder, unpruned layers) cannot go"
               if all(width <= args.multiple for width in report.widths)
               else f"widths are multiples of {args.multiple}; a smaller --multiple gets closer")  # fmt: skip
        print(f"audiosep: warning: {100 * kept:.1f} % of the MACs kept for a target of {100 * args.target_macs:.1f} % "
              f"({why})", file=sys.stderr)  # fmt: skip
    if report.latency_spread_s:
        problem = unreliable_speedup(report.latency_spread_s["before"], report.latency_spread_s["after"])
        if problem:
            print(f"audiosep: warning: {problem}", file=sys.stderr)
    if args.report:
        _write_json(args.report, report.as_dict())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _load(ckpt: str) -> tuple[Any, dict]:
    """The separator and metadata of ``--ckpt``; a bad file is a one-line error."""
    from audiosep.checkpoint import CheckpointError, load_model

    try:
        return load_model(ckpt)
    except CheckpointError as err:
        raise UserError(str(err)) from err


def _write_json(path: str, data: dict) -> None:
    from audiosep.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def format_report(report) -> str:  # noqa: ANN001 (PruneReport, imported lazily)
    """The final table: params, MACs, latency and SI-SNRi before and after, with the steps done and the split named."""
    from audiosep.pruning.latency import speedup_spread

    def cell(value: float | None, pattern: str) -> str:
        return "-" if value is None else pattern.format(value)

    rows = [
        ("params (M)", report.params_before / 1e6, report.params_after / 1e6, "{:.3f}"),
        ("GMAC / audio s", report.macs_before / 1e9, report.macs_after / 1e9, "{:.3f}"),
        ("latency (ms)", _ms(report.latency_before_s), _ms(report.latency_after_s), "{:.1f}"),
        ("dev SI-SNRi (dB)", report.si_snri_before, report.si_snri_after, "{:.2f}"),
    ]
    if report.si_snri_test_before is not None:
        rows.append(("test SI-SNRi (dB)", report.si_snri_test_before, report.si_snri_test_after, "{:.2f}"))
    lines = [f"| {report.method} (seed {report.seed}) | unpruned | pruned |", "|---|---|---|"]
    lines += [f"| {name} | {cell(a, p)} | {cell(b, p)} |" for name, a, b, p in rows]
    if report.latency_spread_s:
        before, after = report.latency_spread_s["before"], report.latency_spread_s["after"]
        low, median, high = speedup_spread(before, after)
        lines.append(f"speed-up {median:.2f}x ({low:.2f}..{high:.2f}x between the latency quartiles; latency "
                     f"q1..q3 {_ms(before['q1']):.1f}..{_ms(before['q3']):.1f} -> "
                     f"{_ms(after['q1']):.1f}..{_ms(after['q3']):.1f} ms), "
                     f"MACs {report.macs_after / report.macs_before:.1%} of the original, "
                     f"SI-SNRi right after surgery {cell(report.si_snri_pruned, '{:.2f}')} dB")  # fmt: skip
    steps = [f"{name} {count}" for name, count in (("search", report.search_steps),
                                                    ("fine-tuning", report.finetune_steps)) if count is not None]
    if steps:
        per_epoch = report.train_batches_per_epoch
        lines.append(f"steps done: {', '.join(steps)}" + (f" ({per_epoch} training batches per epoch)" if per_epoch else ""))
    if report.si_snri_before is not None:
        lines.append(_split_note(report))
    return "\n".join(lines)


def _split_note(report) -> str:  # noqa: ANN001 (PruneReport)
    """Which split each SI-SNRi row comes from, and that the dev figure after fine-tuning is optimistic."""
    if report.si_snri_test_before is not None:
        return ("dev: the split fine-tuning picks its best checkpoint on (optimistic after fine-tuning); "
                "test: held out, the figure to quote")  # fmt: skip
    return ("dev is also the split fine-tuning picks its best checkpoint on (the data has no test split): "
            "the SI-SNRi after fine-tuning is optimistic")  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds
