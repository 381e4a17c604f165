"""Reports of ``audiosep evaluate``: per-utterance CSV, JSON summary, markdown table and PNG plots.

WER and CER are corpus-level (all errors over all reference words, torchmetrics' definition). The
mixture is recognised once and its transcript scored against every speaker's reference: the
mixture row says how a recogniser does on overlapped speech without separation.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from audiosep.io import atomic_write, atomic_write_text
from audiosep.metrics import SILENT_SOURCE_DB

CONDITIONS = ("mixture", "separated", "clean")
SCORE_COLUMNS = ("si_snr", "si_snri", "sdr", "sdri", "pesq", "pesq_mixture", "stoi", "stoi_mixture")
# what each score is measured in, for the report's table (dB beside STOI's 0-1 read as the same scale)
SCORE_UNITS = {"si_snr": "dB", "si_snri": "dB", "sdr": "dB", "sdri": "dB", "pesq": "MOS 1-4.5",
               "pesq_mixture": "MOS 1-4.5", "stoi": "0-1", "stoi_mixture": "0-1"}  # fmt: skip
CSV_COLUMNS = ("id", "duration_s", *SCORE_COLUMNS, "input_snr_db", "overlap_ratio")
PLOTS = ("si_snri_hist.png", "si_snri_vs_input.png", "wer.png")


def _pairs(rows: Sequence[dict[str, Any]], condition: str) -> tuple[list[str], list[str]]:
    """(hypotheses, references) of one condition over all rows, one pair per speaker."""
    hyps: list[str] = []
    refs: list[str] = []
    for row in rows:
        references = row["references"]
        if condition == "mixture":
            hyps += [row["hyp_mixture"]] * len(references)
        else:
            hyps += row[f"hyp_{condition}"]
        refs += references
    # Spaces a CTC decoder leaves at the ends or doubled are no character errors (the references are normalised).
    return [" ".join(hyp.split()) for hyp in hyps], refs


def error_rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Corpus WER and CER (%) per condition (mixture, separated, clean); empty without transcripts.

    None where the references hold no word (character): a rate of nothing is undefined (torchmetrics divides
    by zero: inf or NaN, which strict JSON cannot hold).
    """
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    if not rows or "references" not in rows[0]:
        return {}
    rates = {}
    for condition in CONDITIONS:
        hyps, refs = _pairs(rows, condition)
        words, characters = any(ref.split() for ref in refs), any(refs)
        rates[condition] = {
            "wer": round(100 * float(word_error_rate(hyps, refs)), 2) if words else None,
            "cer": round(100 * float(char_error_rate(hyps, refs)), 2) if characters else None,
        }
    return rates


def rate_text(rate: float | None) -> str:
    """An error rate for a report: ``12.34``, or ``n/a`` where the references held nothing to recognise."""
    return "n/a" if rate is None else f"{rate:.2f}"


def summarise(rows: Sequence[dict[str, Any]], identity: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """Means of every score over the rows, error rates, and this run's throughput."""
    means, counts = {}, {}
    for column in SCORE_COLUMNS:
        values = [row[column] for row in rows if column in row]
        if values:
            means[column] = round(math.fsum(values) / len(values), 3)
            counts[column] = len(values)
    audio_s = math.fsum(row["duration_s"] for row in rows)
    return {
        "run": identity,
        "utterances": len(rows),
        "silent_estimates": sum(row.get("silent_sources", 0) for row in rows),
        "audio_s": round(audio_s, 1),
        "mean": means,
        "mean_over": counts,  # mixtures per mean: PESQ skips those it finds no speech in
        "asr": error_rates(rows),
        "elapsed_s_this_run": round(elapsed_s, 1),
    }


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_formula_guard(value: Any) -> Any:
    """``value``, with a ``'`` before text that a spreadsheet would run as a formula; other values unchanged.

    Why: text in a CSV (a mixture id from the data's metadata, a list of numbers) such as
    ``=HYPERLINK(...)`` or ``-18.1 -14.9`` opened in a spreadsheet would be evaluated (CSV
    injection, OWASP's prefixes ``= + - @`` and tab / carriage return). Numbers are left alone.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_cell(value: Any) -> Any:
    """A value as written to the CSV: floats rounded, text that a spreadsheet would run as a formula quoted."""
    if isinstance(value, float):
        return round(value, 4)
    return csv_formula_guard(value)


def guarded_csv(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], cell: Callable[[Any], Any] = csv_formula_guard,
    lineterminator: str = "\r\n",
) -> str:
    """CSV text of ``rows`` in ``columns`` (others ignored, missing ones empty), every cell through ``cell``,
    by default :func:`csv_formula_guard`: every CSV this project writes goes through here."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows({c: cell(row.get(c)) for c in columns} for row in rows)
    return buffer.getvalue()


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Per-utterance scores as CSV (the columns present in the rows)."""
    return guarded_csv(rows, [c for c in CSV_COLUMNS if any(c in row for row in rows)], _csv_cell)


def to_markdown(summary: dict[str, Any]) -> str:
    """A readable report: mean scores, and WER/CER per condition when a recogniser ran."""
    run = summary["run"]
    lines = [
        f"# Evaluation: {run['data_dir']} ({run['split']}, {run['task']})",
        "",
        f"{summary['utterances']} mixtures, {summary['audio_s']} s of audio.",
        "",
    ]
    if summary["silent_estimates"]:
        lines += [f"**{summary['silent_estimates']} estimated source(s) were silent**, scored {SILENT_SOURCE_DB:g} dB.", ""]
    lines += [
        "| metric | mean | unit | mixtures |",
        "|---|---:|---|---:|",
    ]
    counts = summary.get("mean_over", {})
    lines += [f"| {name} | {value:.3f} | {SCORE_UNITS.get(name, '')} | {counts.get(name, summary['utterances'])} |"
              for name, value in summary["mean"].items()]  # fmt: skip
    if summary["asr"]:
        lines += ["", "| speech recognised | WER % | CER % |", "|---|---:|---:|"]
        lines += [f"| {cond} | {rate_text(v['wer'])} | {rate_text(v['cer'])} |" for cond, v in summary["asr"].items()]
    return "\n".join(lines) + "\n"


def plot_reports(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """SI-SNRi histogram, SI-SNRi vs input SNR and overlap ratio, and WER bars (when a recogniser ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    si_snri = [row["si_snri"] for row in rows]
    written = []
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.hist(si_snri, bins=min(30, max(5, len(rows) // 3)), color="tab:blue")
    axis.set(xlabel="SI-SNRi (dB)", ylabel="mixtures", title=f"SI-SNRi, mean {summary['mean']['si_snri']:.2f} dB")
    fig.tight_layout()
    written.append(("si_snri_hist.png", fig))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    axes[0].scatter([row["input_snr_db"] for row in rows], si_snri, s=10)
    axes[0].set(xlabel="input SNR of the weaker speaker (dB)", ylabel="SI-SNRi (dB)")
    axes[1].scatter([row["overlap_ratio"] for row in rows], si_snri, s=10, color="tab:orange")
    axes[1].set(xlabel="overlap ratio")
    fig.tight_layout()
    written.append(("si_snri_vs_input.png", fig))
    if summary["asr"]:
        fig, axis = plt.subplots(figsize=(5, 4))
        colours = dict(zip(CONDITIONS, ("tab:red", "tab:green", "tab:gray"), strict=True))
        names = [n for n in summary["asr"] if summary["asr"][n]["wer"] is not None]  # n/a: no bar, not a 0 % one
        axis.bar(names, [summary["asr"][n]["wer"] for n in names], color=[colours[n] for n in names])
        axis.set(ylabel="WER (%)", title="recognition of mixture, separated and clean speech")
        fig.tight_layout()
        written.append(("wer.png", fig))
    paths = []
    for name, figure in written:
        atomic_write(out_dir / name, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100))
        plt.close(figure)
        paths.append(out_dir / name)
    return paths


REPORT_FILES = ("scores.csv", "summary.json", "report.md", *PLOTS)


def remove_reports(out_dir: Path) -> None:
    """Delete the reports a previous run left in ``out_dir``: new rows make them stale (they are rewritten
    at the end; a run that stops before must not leave another run's numbers beside its rows)."""
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_reports(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    """Write ``scores.csv``, ``summary.json``, ``report.md`` (and the PNGs); returns the paths."""
    files = {
        "scores.csv": to_csv(rows),
        "summary.json": json.dumps(summary, indent=2) + "\n",
        "report.md": to_markdown(summary),
    }
    paths = []
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
        paths.append(out_dir / name)
    if plots and rows:
        paths += plot_reports(rows, summary, out_dir)
    return paths
