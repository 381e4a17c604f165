"""``run_sweep``: Conv-TasNet over X (blocks per repeat), R (repeats) and H (hidden channels).

After "Scaling strategies for on-device low-complexity source separation with Conv-Tasnet"
(arXiv 2303.03005), which finds the number of dilated blocks the most critical knob. Every
configuration gets the cost of ``audiosep bench`` (params, MACs, latency through one backend,
all configurations timed interleaved, RTF, roofline fraction; peak memory when asked) and, with a
training budget and data, a short training of the recipe with that X / R / H and the best
checkpoint's validation SI-SNRi. The paper's fourth knob, extra dilation inside the blocks, is
not a parameter of our ConvTasNet: it is not swept.

The default grid, X in {4, 6, 8} x R in {1, 2, 3} x H in {128, 256, 512}, is subsampled to the
14 points whose level indices sum to an even number (every level of every knob, the corners and
the centre); ``full_grid`` keeps all 27.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from audiosep.bench.measure import count_macs_at, machine_info
from audiosep.bench.models import LoadedModel, ModelSpec, example_inputs
from audiosep.bench.report import CSV_FIELDS, _pyplot, csv_rows, write_csv
from audiosep.bench.run import (
    BenchSettings,
    build_runners,
    check_lengths,
    load_checked,
    measure_memory,
    memory_jobs,
    run_case,
)
from audiosep.io import atomic_write_text

SWEEP_SCHEMA = "audiosep.bench.sweep/1"
TRAIN_RECORD = "train.json"  # in each configuration's training folder: its settings, then its score
SUBSAMPLE_ABOVE = 16  # grids larger than this are subsampled unless full_grid
ARCHITECTURE_KEYS = (
    "enc_num_filters",
    "enc_kernel_size",
    "bottleneck_channels",
    "skip_channels",
    "conv_kernel_size",
)
SWEEP_FIELDS = (
    "config",
    "num_layers",
    "num_repeats",
    "hidden_channels",
    "receptive_field_s",
    "si_snri_db",
    "checkpoint",
)
NOTE_DILATION = "extra dilation inside the blocks (the paper's fourth knob) is not a parameter of our ConvTasNet: not swept"


@dataclass
class SweepSettings:
    """What to sweep and how to measure it (see ``audiosep bench sweep --help``)."""

    base: str = "conv_tasnet_demo"
    num_layers: list[int] = field(default_factory=lambda: [4, 6, 8])
    num_repeats: list[int] = field(default_factory=lambda: [1, 2, 3])
    hidden_channels: list[int] = field(default_factory=lambda: [128, 256, 512])
    full_grid: bool = False
    seconds: float = 4.0
    batch_size: int = 1
    backend: str = "prepared"
    device: str = "cpu"
    threads: int | None = None
    repeats: int | None = None
    time_budget_s: float = 20.0
    memory: bool = False
    train_minutes: float | None = None
    data: str | None = None
    train_config: str = "demo/convtasnet_tiny.yaml"
    train_args: list[str] = field(default_factory=list)
    train_dir: str | None = None
    progress: bool = True


def sweep_configs(settings: SweepSettings) -> list[dict[str, int]]:
    """The (X, R, H) grid, subsampled (even index sum) when larger than 16 and not ``full_grid``."""
    levels = (settings.num_layers, settings.num_repeats, settings.hidden_channels)
    indexed = itertools.product(*(list(enumerate(values)) for values in levels))
    grid = [tuple(zip(*point, strict=True)) for point in indexed]  # ((i, j, k), (X, R, H))
    if len(grid) > SUBSAMPLE_ABOVE and not settings.full_grid:
        grid = [point for point in grid if sum(point[0]) % 2 == 0]
    return [
        dict(zip(("num_layers", "num_repeats", "hidden_channels"), values, strict=True)) for _, values in grid
    ]


def receptive_field_s(args: dict[str, Any], sample_rate: int) -> float:
    """Seconds of input one output frame sees: ``1 + R (P - 1)(2^X - 1)`` frames of stride ``L / 2``."""
    frames = 1 + args["num_repeats"] * (args["conv_kernel_size"] - 1) * (2 ** args["num_layers"] - 1)
    stride = args["enc_kernel_size"] // 2
    return ((frames - 1) * stride + args["enc_kernel_size"]) / sample_rate


def _max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for ``minutes``."""
    seconds = max(1, round(minutes * 60))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_and_score(
    model: LoadedModel, settings: SweepSettings, root: Path
) -> tuple[float | None, str | None]:
    """Train the recipe with ``model``'s sizes for the budget; the best checkpoint's val SI-SNRi and path."""
    from audiosep.checkpoint import load_model
    from audiosep.data.identity import data_identity
    from audiosep.pruning.pipeline import validation_si_snri
    from audiosep.training_cli import checked_last_checkpoint, claim_training_folder, run_lightning_cli

    init_args = model.module.init_args
    sizes = {
        key: init_args[key] for key in (*ARCHITECTURE_KEYS, "num_layers", "num_repeats", "hidden_channels")
    }
    argv = [
        "--config", settings.train_config, f"--data.root={settings.data}",
        f"--trainer.max_time={_max_time(settings.train_minutes or 0)}", f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false", *[f"--model.model.init_args.{k}={v}" for k, v in sizes.items()],
        *settings.train_args,
    ]  # fmt: skip
    cli = run_lightning_cli(argv, run=False)
    # the data as the run reads it (folder resolved, metadata digests): a data folder rebuilt in place kept the
    # old scores under its unchanged path (reviewer)
    identity = {"train_config": settings.train_config, "data": data_identity(cli.datamodule), "sizes": sizes,
                "train_minutes": settings.train_minutes, "train_args": list(settings.train_args)}  # fmt: skip
    record = claim_training_folder(root, identity, TRAIN_RECORD)
    if "si_snri_db" in record:
        return record["si_snri_db"], record["checkpoint"]
    resume = checked_last_checkpoint(root, cli.model, cli.datamodule, f"delete {root} to train this configuration from its start")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=None if resume is None else str(resume))
    callback = cli.trainer.checkpoint_callback
    best = (callback.best_model_path or callback.last_model_path) if callback else ""
    score = None
    if best:
        trained, _ = load_model(best)
        score = validation_si_snri(trained, cli.datamodule)
    atomic_write_text(root / TRAIN_RECORD, json.dumps(identity | {"si_snri_db": score, "checkpoint": best or None}))
    return score, best or None


def pareto_front(rows: list[dict[str, Any]], cost: str, quality: str) -> list[str]:
    """Configs that no other beats on both ``cost`` (lower) and ``quality`` (higher), by cost."""
    points = sorted(
        (r[cost], -r[quality], r["config"])
        for r in rows
        if r.get(cost) is not None and r.get(quality) is not None
    )
    front, best = [], -float("inf")
    for _, negative, config in points:
        if -negative > best:
            front.append(config)
            best = -negative
    return front


def run_sweep(settings: SweepSettings) -> dict[str, Any]:
    """Cost (and, with ``train_minutes`` and ``data``, quality) of every configuration of the grid."""
    from tqdm import tqdm

    device = torch.device(settings.device)
    threads = settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    labels = [
        f"X{c['num_layers']}-R{c['num_repeats']}-H{c['hidden_channels']}" for c in sweep_configs(settings)
    ]
    models = {label: load_checked(ModelSpec(label, "preset", settings.base, c))
              for label, c in zip(labels, sweep_configs(settings), strict=True)}  # fmt: skip
    check_lengths(models.values(), [settings.seconds], "--seconds")
    machine = machine_info(device, threads, [torch.float32])
    bench = BenchSettings(repeats=settings.repeats, time_budget_s=settings.time_budget_s, memory=settings.memory,
                          device=settings.device, threads=threads)  # fmt: skip
    train = settings.train_minutes is not None and settings.data is not None
    bar = tqdm(total=1 + (len(models) if train else 0), desc="sweep", file=sys.stderr, disable=None if settings.progress else True,
               leave=False)  # fmt: skip
    seconds = [settings.seconds]
    macs = {label: count_macs_at(m.module, functools.partial(example_inputs, m, 1), seconds)[0]
            for label, m in models.items()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="audiosep-sweep-") as workdir:
        runners = build_runners(list(models.values()), [settings.backend], torch.float32, device, Path(workdir),
                                threads, seconds)  # fmt: skip
        records = run_case(runners, settings.seconds, settings.batch_size, macs, bench, device, threads)
        bar.update()
        artifacts = {(r.model, r.backend, "fp32"): r.artifact for _, r, _ in runners}
        measure_memory(memory_jobs(records, models, artifacts, bench), threads, (), bar)
    rows = [_row(models[record["model"]], record) for record in records]
    for row in rows if train else []:
        root = Path(settings.train_dir or "sweep_train") / row["config"]
        row["si_snri_db"], row["checkpoint"] = train_and_score(models[row["config"]], settings, root)
        bar.update()
    bar.close()
    quality = "si_snri_db" if train else "receptive_field_s"
    return {
        "schema": SWEEP_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": asdict(settings) | {"threads": threads},
        "notes": [NOTE_DILATION],
        "rows": rows,
        "pareto": {
            "quality": quality,
            "macs": pareto_front(rows, "macs", quality),
            "latency": pareto_front(rows, "latency_median_s", quality),
        },  # fmt: skip
    }


def _row(model: LoadedModel, record: dict[str, Any]) -> dict[str, Any]:
    """One configuration: X, R, H, receptive field, then the bench record's fields."""
    args = model.module.init_args
    row = {"config": model.spec.label, **{k: args[k] for k in ("num_layers", "num_repeats", "hidden_channels")},
           "receptive_field_s": receptive_field_s(args, model.sample_rate), "si_snri_db": None, "checkpoint": None}  # fmt: skip
    row |= {k: v for k, v in record.items() if k != "model"}
    row["latency_median_s"] = row["latency_s"]["median"] if row["latency_s"] else None
    return row


def format_sweep_table(report: dict[str, Any]) -> str:
    """Markdown table of the sweep, one row per configuration; Pareto configs starred."""
    front = set(report["pareto"]["macs"]) | set(report["pareto"]["latency"])
    seconds = report["settings"]["seconds"]
    lines = [f"| config | X | R | H | params (M) | GMAC / audio s | receptive field (s) | latency {seconds:g} s (ms) "
             "[min-max] | RTF | roofline | peak MiB | SI-SNRi (dB) |", "|" + "---|" * 12]  # fmt: skip
    for row in report["rows"]:
        latency = row["latency_s"]
        cell = (f"{1e3 * latency['median']:.1f} [{1e3 * latency['min']:.1f}-{1e3 * latency['max']:.1f}]"
                if latency else row["status"])  # fmt: skip
        lines.append(
            f"| {row['config']}{' *' if row['config'] in front else ''} | {row['num_layers']} | {row['num_repeats']} "
            f"| {row['hidden_channels']} | {row['params'] / 1e6:.3f} | {row['gmac_per_audio_second']:.3f} "
            f"| {row['receptive_field_s']:.3f} | {cell} | {_fmt(row['rtf'], '{:.4f}')} "
            f"| {_fmt(row['roofline_fraction'], '{:.0%}')} | {_fmt(row['peak_memory_mib'], '{:.0f}')} "
            f"| {_fmt(row['si_snri_db'], '{:.2f}')} |"
        )
    quality = (
        "SI-SNRi" if report["pareto"]["quality"] == "si_snri_db" else "receptive field (no quality measured)"
    )
    lines += [
        "",
        f"* on a Pareto front of {quality} vs MACs or vs latency.",
        *[f"- {n}" for n in report["notes"]],
    ]
    return "\n".join(lines)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Quality (SI-SNRi; the receptive field when none was measured) vs GMAC / audio s and vs latency."""
    plt = _pyplot()
    quality = report["pareto"]["quality"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    rows = report["rows"]
    for ax, (cost, scale, label, front) in zip(axes, (
        ("gmac_per_audio_second", 1.0, "GMAC per audio second", report["pareto"]["macs"]),
        ("latency_median_s", 1e3, f"latency of {report['settings']['seconds']:g} s (ms, {report['settings']['backend']})",
         report["pareto"]["latency"]),
    ), strict=True):  # fmt: skip
        points = [(r[cost] * scale, r[quality], r["config"])
                  for r in rows if r.get(cost) is not None and r.get(quality) is not None]  # fmt: skip
        if points:
            xs, ys, names = zip(*points, strict=True)
            ax.scatter(xs, ys, s=18)
            for x, y, name in points:
                ax.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
            on_front = sorted(p for p in points if p[2] in front)
            ax.plot([p[0] for p in on_front], [p[1] for p in on_front], "r-", lw=1, label="Pareto front")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(
        "val SI-SNRi (dB)" if quality == "si_snri_db" else "receptive field (s): no quality measured"
    )
    figure.suptitle(f"Conv-TasNet X / R / H sweep on {report['settings']['base']} ({report['machine']['device_name'][:40]})",
                    fontsize=9)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_sweep_outputs(report: dict[str, Any], out_dir: Path | str) -> list[Path]:
    """``sweep.json``, ``sweep.csv`` and ``pareto.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.json", out / "sweep.csv", out / "pareto.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    flat = [
        dict(zip(SWEEP_FIELDS, (r[k] for k in SWEEP_FIELDS), strict=True)) | csv_rows([r])[0]
        for r in report["rows"]
    ]
    write_csv(flat, paths[1], (*SWEEP_FIELDS, *(f for f in CSV_FIELDS if f != "model")))
    plot_pareto(report, paths[2])
    return paths
