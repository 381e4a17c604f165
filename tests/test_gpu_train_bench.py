"""``benchmarks/gpu_train_bench.py`` on CPU with tiny configurations: rows, budget, failures, targets, hard limit."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_bench.py"
TINY = {
    "conv_tasnet_base": {"enc_num_filters": 16, "enc_kernel_size": 8, "bottleneck_channels": 8,
                         "hidden_channels": 12, "skip_channels": 8, "num_layers": 2, "num_repeats": 1},
    "sepformer_base": {"encoder_channels": 16, "model_channels": 16, "num_blocks": 1, "num_intra_layers": 1,
                       "num_inter_layers": 1, "num_heads": 2, "ffn_dim": 32, "chunk_size": 10},
    "resepformer_base": {"encoder_channels": 16, "num_blocks": 1, "num_intra_layers": 1, "num_inter_layers": 1,
                         "num_heads": 2, "ffn_dim": 32, "chunk_size": 10},
    "tiny_sepformer_base": {"encoder_channels": 16, "model_channels": 16, "attention_channels": 8, "num_heads": 2,
                            "num_blocks": 1, "num_intra_layers": 1, "num_inter_layers": 1, "ffn_dim": 32,
                            "chunk_size": 10},
}  # fmt: skip
FAST = ["--device", "cpu", "--seconds", "0.25", "--batch-size", "1", "--steps", "2", "--warmup", "1",
        "--threads", "1", "--compile-modes", "eager", "--profile-models"]  # fmt: skip


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    """The benchmark script as a module (scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location("gpu_train_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny(*models: str) -> list[str]:
    """``--models`` and the ``--override`` flags that shrink each of them to a few thousand parameters."""
    flags = [f"--override={m}.{k}={v}" for m in models for k, v in TINY[m].items()]
    return ["--models", *models, *flags]


def run(script: ModuleType, tmp_path: Path, argv: list[str]) -> dict[str, Any]:
    out = tmp_path / "train.json"
    assert script.main([*FAST, *argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_separator_trains_at_fp32_and_bf16_with_timings_memory_and_a_profile(script, tmp_path, capsys):
    models = list(TINY)
    summary = run(script, tmp_path, [*tiny(*models), "--dtypes", "fp32", "bf16",
                                     "--profile-models", "conv_tasnet_base", "--profile-steps", "1"])  # fmt: skip
    assert summary["schema"] == "audiosep.gpu_train_bench/1" and summary["skipped"] == []
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["torch"]
    ours = [r for r in summary["results"] if r["kind"] == "ours"]
    # the models in order, each at both dtypes (no target case here: tiny SepFormer is not sepformer_base)
    assert [(r["model"].split("(")[0], r["dtype"]) for r in ours] == [(m, d) for m in models for d in ("fp32", "bf16")]
    for row in ours:
        assert row["status"] == "ok" and row["compile"] is False and row["compile_s"] is None
        assert row["steps"] == 2 and row["batch"] == 1 and row["seconds"] == 0.25
        assert 0 < row["step_min_s"] <= row["step_median_s"] <= row["step_max_s"] < 10
        assert row["steps_per_s"] == pytest.approx(1 / row["step_median_s"])
        assert math.isfinite(row["loss"]) and 0 < row["params"] < 100_000
        assert row["peak_memory_mib"] is None or row["peak_memory_mib"] >= 0
    # SpeechBrain's SepFormer is measured in its published configuration only: a row saying why
    peers = [r for r in summary["results"] if r["kind"] == "peer"]
    assert [r["dtype"] for r in peers] == ["fp32", "bf16"]
    assert all(r["status"].startswith("unsupported: ") and r["step_median_s"] is None for r in peers)
    assert all(r["peer_of"].startswith("sepformer_base(") for r in peers)
    (profile,) = summary["profile"]
    assert profile["status"] == "ok" and profile["dtype"] == "bf16"
    assert profile["flops_per_step"] > 0 and profile["top_ops"] and profile["roofline_fraction"] > 0
    assert all(profile[k] > 0 for k in ("forward_loss_s", "backward_s", "optimizer_s"))
    assert summary["targets"]["status"].startswith("incomplete") and summary["targets"]["pass"] is None
    printed = capsys.readouterr().out
    assert "tiny_sepformer_base" in printed and "speed_vs_peer_eager" in printed


def test_budget_spent_after_the_first_case_skips_the_rest_and_still_writes(script, tmp_path):
    argv = [*tiny("conv_tasnet_base"), "--dtypes", "fp32", "bf16", "--compile-modes", "eager", "compile",
            "--budget-s", "0"]  # fmt: skip
    summary = run(script, tmp_path, argv)
    (row,) = summary["results"]
    assert row["status"] == "ok" and (row["dtype"], row["compile"]) == ("fp32", False)
    # eager cases first, then the compiled ones (never started here)
    assert [(s["dtype"], s["compile"]) for s in summary["skipped"]] == [("bf16", False), ("fp32", True),
                                                                        ("bf16", True)]  # fmt: skip


def test_a_compile_failure_is_a_row_and_the_run_goes_on(script, tmp_path, monkeypatch):
    def broken_compile(model, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler here")

        return call

    monkeypatch.setattr(script.torch, "compile", broken_compile)
    summary = run(script, tmp_path, [*tiny("conv_tasnet_base"), "--dtypes", "fp32", "--compile-modes", "eager",
                                     "compile"])  # fmt: skip
    eager, compiled = summary["results"]
    assert eager["status"] == "ok" and eager["compile"] is False
    assert compiled["compile"] is True and compiled["status"] == "unsupported: RuntimeError: no C++ compiler here"
    assert compiled["step_median_s"] is None


def test_an_unknown_preset_is_an_error_not_a_json(script, tmp_path, capsys):
    out = tmp_path / "train.json"
    assert script.main([*FAST, "--models", "no_such_model", "--out", str(out)]) == 2
    assert "no_such_model" in capsys.readouterr().err and not out.exists()


def _row(kind: str, compiled: bool, step: float, memory: float, dtype: str = "bf16", status: str = "ok",
         model: str = "sepformer_base") -> dict[str, Any]:  # fmt: skip
    return {"model": model if kind == "ours" else "SpeechBrain SepFormer", "kind": kind, "dtype": dtype,
            "compile": compiled, "status": status, "step_median_s": step, "peak_memory_mib": memory,
            "peer_of": None if kind == "ours" else model}  # fmt: skip


def test_targets_compare_our_sepformer_with_speechbrains_at_bf16(script):
    peer = [_row("peer", False, 0.13, 16_000), _row("peer", True, 0.083, 14_000)]
    noise = [_row("ours", False, 0.001, 1, dtype="fp32"), _row("ours", True, 0.001, 1, status="unsupported: x"),
             _row("ours", False, 0.001, 1, model="sepformer_base(num_blocks=1)")]  # fmt: skip
    good = script.compute_targets([_row("ours", False, 0.04, 5_000), _row("ours", True, 0.03, 6_000), *peer, *noise])
    assert good["status"] == "ok" and good["pass"] is True and good["ours_best_compiled"] is True
    assert good["speed_vs_peer_eager"]["ratio"] == pytest.approx(0.13 / 0.04)
    assert good["speed_vs_peer_compiled"]["ratio"] == pytest.approx(0.083 / 0.03)
    assert good["memory_vs_peer"]["ratio"] == pytest.approx(5_000 / 16_000)
    slow = script.compute_targets([_row("ours", False, 0.1, 9_000), *peer])
    assert slow["pass"] is False and slow["speed_vs_peer_eager"]["pass"] is False
    assert slow["speed_vs_peer_compiled"]["pass"] is False and slow["memory_vs_peer"]["pass"] is False
    missing = script.compute_targets([_row("ours", False, 0.04, 5_000), peer[0]])
    assert missing["status"] == "incomplete: no ok bf16 row for peer compiled" and missing["pass"] is None
    assert missing["speed_vs_peer_compiled"] == {"ratio": None, "target": 2.0, "pass": None,
                                                 "means": missing["speed_vs_peer_compiled"]["means"]}
    assert missing["speed_vs_peer_eager"]["pass"] is True


def test_a_missing_speechbrain_gives_the_peer_a_row_saying_so(script, monkeypatch):
    monkeypatch.setitem(sys.modules, "speechbrain", None)
    entries = script.resolve_entries(script.parse_args(["--models", "conv_tasnet_base", "sepformer_base"]))
    assert [(e.label, e.kind) for e in entries] == [("conv_tasnet_base", "ours"), ("sepformer_base", "ours"),
                                                    ("SpeechBrain SepFormer", "peer")]  # fmt: skip
    assert entries[2].reason == "speechbrain is not importable" and entries[2].peer_of == "sepformer_base"
    assert len(script.resolve_entries(script.parse_args(["--models", "sepformer_base", "--no-peers"]))) == 1


def test_speechbrain_sepformer_trains_as_the_peer_of_ours(script):
    pytest.importorskip("speechbrain")
    import torch

    from audiosep.models import build

    args = script.parse_args([*FAST, "--models", "sepformer_base", "--dtypes", "fp32", "--seconds", "0.1",
                              "--steps", "1", "--warmup", "0"])  # fmt: skip
    ours, peer = script.resolve_entries(args)
    assert (peer.label, peer.kind, peer.peer_of, peer.reason) == ("SpeechBrain SepFormer", "peer", "sepformer_base",
                                                                  None)  # fmt: skip
    row = script.run_case(script.Case(peer, "fp32", False), args, torch.device("cpu"))  # ours: the tests above
    assert (row["model"], row["kind"], row["status"]) == ("SpeechBrain SepFormer", "peer", "ok")
    assert row["step_median_s"] > 0 and math.isfinite(row["loss"]) and row["steps"] == 1
    with torch.device("meta"):
        ours_params = sum(p.numel() for p in build("sepformer_base").parameters())
    assert row["params"] == pytest.approx(ours_params, rel=0.01)  # the same architecture and size


def test_the_hard_limit_stops_a_running_case_and_writes_the_json(tmp_path):
    out = tmp_path / "train.json"
    argv = [sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1", *tiny("conv_tasnet_base"),
            "--dtypes", "fp32", "bf16", "--compile-modes", "eager", "--profile-models", "--steps", "1000000",
            "--case-seconds", "600", "--hard-limit-s", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["stopped_at_hard_limit"] is True and 1 <= summary["wall_s"] < 60
    (row,) = summary["results"]
    assert row["dtype"] == "fp32" and row["status"] == "unsupported: stopped at the hard limit (1 s) while running"
    assert [(s["dtype"], s["compile"]) for s in summary["skipped"]] == [("bf16", False)]
