"""What a benchmark writes: a markdown table for the terminal, JSON, CSV, and PNG plots.

The CSV has one row per JSON record (``results``), the ``latency_s`` statistics flattened into
``latency_<stat>_s`` columns. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audiosep.io import atomic_write_text

CSV_FIELDS = (
    "model", "kind", "backend", "dtype", "batch_size", "seconds", "device", "threads", "status", "params",
    "macs", "gmac_per_audio_second", "latency_median_s", "latency_min_s", "latency_max_s", "latency_q1_s",
    "latency_q3_s", "cpu_time_s", "repeats", "rtf", "mac_per_s", "roofline_mac_per_s", "roofline_fraction",
    "peak_memory_mib",
    "memory", "max_abs_error", "si_snr_vs_eager_db", "peer", "peer_ratio",
)  # fmt: skip
LATENCY_STATS = ("median", "min", "max", "q1", "q3")


def csv_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per record, keys :data:`CSV_FIELDS`."""
    rows = []
    for record in records:
        latency = record.get("latency_s") or {}
        row = {k: v for k, v in record.items() if k != "latency_s"}
        row |= {f"latency_{stat}_s": latency.get(stat) for stat in LATENCY_STATS}
        rows.append({name: row.get(name) for name in CSV_FIELDS})
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path, fields: Sequence[str]) -> None:
    """``rows`` as CSV, written atomically; text a spreadsheet would run as a formula is quoted (a model label
    comes from a --ckpt file name: ``=HYPERLINK(...).pt``)."""
    from audiosep.eval_report import guarded_csv

    atomic_write_text(path, guarded_csv(rows, fields, lineterminator="\n"))  # csv writes None as an empty cell


def _group(records: Sequence[dict[str, Any]]) -> dict[tuple, dict[float, dict[str, Any]]]:
    """Records by row key (model, backend, dtype, batch), then by length, in first-seen order."""
    rows: dict[tuple, dict[float, dict[str, Any]]] = {}
    for record in records:
        key = (record["model"], record["backend"], record["dtype"], record["batch_size"])
        rows.setdefault(key, {})[record["seconds"]] = record
    return rows


def _rtf_cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record["status"] != "ok":
        return "unsupported" if record["status"].startswith("unsupported") else record["status"]
    latency, scale = record["latency_s"], record["batch_size"] * record["seconds"]
    return f"{record['rtf']:.3f} [{latency['min'] / scale:.3f}-{latency['max'] / scale:.3f}]"


def _joined(values: Sequence[Any], pattern: str) -> str:
    return " / ".join("-" if v is None else pattern.format(v) for v in values)


def _total_latency(row: dict[str, Any]) -> str:
    """A streaming row's total latency, or why there is none (a stream slower than real time falls behind)."""
    total = row["total_latency_ms"]
    return "unbounded (RTF >= 1)" if total is None else f"{total:.2f}"


def format_streaming(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the streaming rows (:mod:`audiosep.bench.streaming`); empty without a causal model."""
    measured = [row for row in rows if "compute_ms" in row]
    if not measured:
        return ""  # the JSON rows say why each model cannot stream
    lines = [
        "| model | block (ms) | algorithmic latency (ms) | compute / emitting step (ms) | compute RTF | total latency (ms) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['model']} | {row['block_ms']:g} | {row['algorithmic_latency_ms']:g} | {row['compute_ms']:.2f} "
        f"| {row['compute_rtf']:.2f} | {_total_latency(row)} |"
        for row in measured
    ]
    return "\n".join(lines)


def roofline_span(records: Sequence[dict[str, Any]]) -> str:
    """``; roofline per case ...`` with the range of the in-round matmul figures, or "" when none was timed."""
    peaks = [r["roofline_mac_per_s"] for r in records if r.get("roofline_mac_per_s")]
    if not peaks:
        return ""
    return (f"; roofline per case (best matmul pass of its interleaved rounds) "
            f"{min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f} GMAC/s")  # fmt: skip


def int8_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per int8 result: speed-up over the prepared fp32 model of the same case, SI-SNR vs eager."""
    prepared = {(r["model"], r["dtype"], r["batch_size"], r["seconds"]): r for r in records if r["backend"] == "prepared"}
    lines = []
    for record in records:
        if record["backend"] != "int8" or record["status"] != "ok":
            continue
        base = prepared.get((record["model"], record["dtype"], record["batch_size"], record["seconds"]))
        speedup = (base["latency_s"]["median"] / record["latency_s"]["median"]
                   if base and base.get("latency_s") and record.get("latency_s") else None)  # fmt: skip
        speed = "" if speedup is None else f"{speedup:.2f}x prepared {record['dtype']}, "
        lines.append(f"{record['model']} int8, batch {record['batch_size']}, {record['seconds']:g} s: {speed}"
                     f"SI-SNR vs eager fp32 {record['si_snr_vs_eager_db']:.1f} dB")  # fmt: skip
    return lines


def format_table(report: dict[str, Any]) -> str:
    """Markdown table, one row per (model, backend, dtype, batch): RTF [min-max], memory, roofline
    fraction and peer / ours latency ratio per length; then the notes."""
    lengths = report["settings"]["lengths"]
    rows = _group(report["results"])
    head = " | ".join(f"RTF {s:g} s" for s in lengths)
    span = "/".join(f"{s:g}" for s in lengths)
    lines = [
        f"| model | backend | dtype | batch | params (M) | GMAC / audio s | {head} | peak MiB {span} s "
        f"| roofline {span} s | peer / ours {span} s |",
        "|" + "---|" * (9 + len(lengths)),
    ]
    notes = list(report.get("notes", []))
    for (model, backend, dtype, batch), by_length in rows.items():
        cells = [by_length.get(s) for s in lengths]
        first = next(r for r in cells if r)
        # GMAC per audio second from the longest length run: a short input is padded to the encoder
        # window, so its per-second figure is inflated.
        per_second = next(r for r in reversed(cells) if r)["gmac_per_audio_second"]
        ratios = [r.get("peer_ratio") if r else None for r in cells]
        lines.append(
            f"| {model.replace('|', '/')} | {backend} | {dtype} | {batch} | {first['params'] / 1e6:.2f} "
            f"| {per_second:.2f} | {' | '.join(_rtf_cell(r) for r in cells)} "
            f"| {_joined([r.get('peak_memory_mib') if r else None for r in cells], '{:.0f}')} "
            f"| {_joined([r.get('roofline_fraction') if r else None for r in cells], '{:.0%}')} "
            f"| {_joined(ratios, '{:.2f}') if any(ratios) else '-'} |"
        )
        reasons = {r["status"] for r in cells if r and r["status"] != "ok"}
        reasons |= {r["memory"] for r in cells if r and r["memory"].startswith("failed")}
        notes += [f"{model} / {backend} / {dtype} / batch {batch}: {reason}" for reason in sorted(reasons)]
    notes += int8_notes(report["results"])
    machine = report["machine"]
    lines.append("")
    lines.append(
        f"{machine['device_name']}, {machine['threads']} threads; fp32 matmul "
        f"{machine['matmul_fp32_mac_per_s'] / 1e9:.1f} GMAC/s at the start{roofline_span(report['results'])}, "
        f"bf16 native: {machine['bf16_native']}. RTF = median latency / audio seconds [min-max over repeats]."
    )
    lines += [f"- {note}" for note in notes]
    streaming = format_streaming(report.get("streaming", []))
    if streaming:
        lines += ["", f"Streaming, {report['settings']['block_ms']:g} ms blocks (batch 1, fp32, stateful stream):", streaming]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_length(report: dict[str, Any], path: Path, what: str) -> None:
    """``what`` = ``latency`` (median, min-max bars) or ``memory`` (peak extra MiB) vs input seconds."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (model, backend, dtype, batch), by_length in _group(report["results"]).items():
        points = sorted((s, r) for s, r in by_length.items() if r["status"] == "ok")
        if what == "latency":
            points = [(s, r["latency_s"]) for s, r in points]
            if not points:
                continue
            xs, stats = zip(*points, strict=True)
            ys = [st["median"] for st in stats]
            errors = [[y - st["min"] for y, st in zip(ys, stats, strict=True)],
                      [st["max"] - y for y, st in zip(ys, stats, strict=True)]]  # fmt: skip
            axes.errorbar(
                xs, ys, yerr=errors, marker="o", capsize=3, label=f"{model} / {backend} / {dtype} / b{batch}"
            )
        else:
            points = [(s, r["peak_memory_mib"]) for s, r in points if r["peak_memory_mib"] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker="o", label=f"{model} / {backend} / {dtype} / b{batch}")
    axes.set_xscale("log", base=2)
    lengths = report["settings"]["lengths"]
    axes.set_xticks(lengths, [f"{s:g}" for s in lengths])
    axes.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    axes.set_xlabel("input length (s)")
    axes.set_ylabel("latency (s), median and min-max" if what == "latency" else "peak extra memory (MiB)")
    if what == "latency":
        axes.set_yscale("log")
    machine = report["machine"]
    axes.set_title(
        f"{what} vs input length: {machine['device_name'][:40]}, {machine['threads']} threads", fontsize=9
    )
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(report: dict[str, Any], out_dir: Path | str) -> list[Path]:
    """``bench.json``, ``bench.csv``, ``latency.png`` and ``memory.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.csv", out / "latency.png", out / "memory.png"]
    atomic_write_text(paths[0], json.dumps(report, indent=2))
    write_csv(csv_rows(report["results"]), paths[1], CSV_FIELDS)
    plot_vs_length(report, paths[2], "latency")
    plot_vs_length(report, paths[3], "memory")
    return paths
