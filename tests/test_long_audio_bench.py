"""benchmarks/long_audio.py end to end on a tiny preset and a 1.2 s file: rows, memory and the one-pass reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "long_audio.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("long_audio_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_audio_bench_reports_chunked_and_unchunked_runs(tmp_path: Path) -> None:
    bench = _load_bench()
    minutes = 0.02  # 1.2 s: three 0.5 s chunks, and one pass for the reference
    argv = ["--models", "conv_tasnet_demo", "--minutes", str(minutes), "--chunk-seconds", "0.5",
            "--infer-args=--overlap-seconds 0.1", "--unchunked-max-minutes", str(minutes),
            "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    (row,) = json.loads((tmp_path / "long_audio.json").read_text())["rows"]
    assert row["model"] == "conv_tasnet_demo" and row["minutes"] == minutes
    assert row["peak_rss_mib"] > 100 and row["unchunked_peak_rss_mib"] > 100  # torch alone is a few hundred MiB
    assert row["wall_s"] > 0 and row["unchunked_wall_s"] > 0 and row["model_rtf"] > 0
    assert "overhead_vs_unchunked" in row
    table = (tmp_path / "long_audio.md").read_text()
    assert "| conv_tasnet_demo | 0.02 min |" in table and "over unchunked" in table
