"""The GPU training-step benchmark in one command, under a time budget, into one JSON.

Every separator preset (and SpeechBrain's SepFormer next to ``sepformer_base`` when speechbrain is
importable) trains a few steps on one random batch (default 4 x 4 s at 8 kHz): forward (under
``torch.autocast`` at bf16 / fp16, as Lightning's bf16-mixed), PIT SI-SNR loss in float32, backward,
Adam step, at each dtype, eager and through ``torch.compile``. One row per case: median step time
after warm-up (device synchronized), steps/s, peak memory (CUDA max allocated; CPU peak RSS growth)
and, compiled, the compilation time spent in the warm-up steps.

Order: the eager cases (cheap), then a profile of ``sepformer_base`` and its peer (where an eager step
spends its time: device busy fraction, kernels, forward/backward/optimizer, FLOP rate against the
device's matmul), then the compiled cases; in each phase SepFormer's and its peer's bf16 cases come
first, since the targets need them. Past ``--budget-s`` no case starts (the rest are listed under
``skipped``); at ``--hard-limit-s`` a running case is stopped and the JSON written as it stands, so the
script ends in under 5 minutes and always leaves its JSON (also rewritten after every case).

``targets``: our SepFormer's bf16 step against SpeechBrain's, same run: >= 3x its eager step (ours
eager), >= 2x its compiled step (ours eager or compiled, the faster), at most half its eager memory.

    python benchmarks/gpu_train_bench.py --out gpu_train_bench.json          # on the GPU machine
    python benchmarks/gpu_train_bench.py --device cpu --seconds 0.5 --batch-size 1 --steps 2 \\
        --dtypes fp32 --out /tmp/gpu_train_bench.json                         # the same code path on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from audiosep.bench import parse_overrides  # noqa: E402
from audiosep.bench.backends import unsupported  # noqa: E402
from audiosep.bench.measure import bf16_native, cpu_name, matmul_mac_per_s  # noqa: E402
from audiosep.bench.memory import peak_rss_mib, rss_supported, start_peak_window  # noqa: E402
from audiosep.bench.models import (  # noqa: E402
    PEER_LABELS,
    SEPARATOR_RATE,
    SPEECH_LEVEL,
    LoadedModel,
    ModelSpec,
    load,
    peer_spec,
)
from audiosep.io import atomic_write_text  # noqa: E402
from audiosep.losses import PITSISNRLoss  # noqa: E402
from audiosep.models import build  # noqa: E402

MODELS = ("conv_tasnet_base", "sepformer_base", "resepformer_base", "tiny_sepformer_base")
SCHEMA = "audiosep.gpu_train_bench/1"
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PEER_OF_CLASS = {"ConvTasNet": "torchaudio-conv-tasnet", "SepFormer": "speechbrain-sepformer",
                 "RESepFormer": "speechbrain-resepformer"}  # fmt: skip
TARGET_MODEL, TARGET_PEER, TARGET_DTYPE = "sepformer_base", "speechbrain-sepformer", "bf16"
TARGETS = {"speed_vs_peer_eager": 3.0, "speed_vs_peer_compiled": 2.0, "memory_vs_peer": 0.5}
LEARNING_RATE = 1e-4
MIB = 2**20
MATMUL_SIZE = {"cuda": 8192, "cpu": 512}  # big enough to reach an H100's peak, small enough for a CPU test
TOP_OPS = 12


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="(default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registry presets")
    parser.add_argument("--override", action="append", default=[], metavar="[MODEL.]KEY=VALUE",
                        help="constructor override (YAML value), for every model or one; repeatable")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio seconds per item (8 kHz)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(AUTOCAST),
                        help="autocast dtype of the forward (fp16: CUDA only, with a gradient scaler)")
    parser.add_argument("--compile-modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode: default, reduce-overhead, max-autotune, ...")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per case (compilation happens here; 0: none, no compile_s)")
    parser.add_argument("--steps", type=int, default=20, help="at most this many timed steps per case")
    parser.add_argument("--case-seconds", type=float, default=3.0, help="and at most this long (>= 1 step)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no case after this")
    parser.add_argument("--hard-limit-s", type=float, default=285.0,
                        help="stop a running case and write the JSON at this time")
    parser.add_argument("--no-peers", action="store_true", help="no SpeechBrain SepFormer")
    parser.add_argument("--all-peers", action="store_true",
                        help="also torchaudio's ConvTasNet and SpeechBrain's RE-SepFormer")
    parser.add_argument("--profile-models", nargs="*", default=[TARGET_MODEL, TARGET_PEER],
                        help="presets or peer names to profile (eager); none: no profile")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="gpu_train_bench.json", help="the one JSON written")
    return parser.parse_args(argv)


# --- what is trained ---------------------------------------------------------------------------------


@dataclass
class Entry:
    """One model: ours (a preset with overrides) or a peer; ``reason`` says why it cannot be trained."""

    label: str
    kind: str  # "ours" or "peer"
    name: str  # preset name or peer name (a key of audiosep.bench.models.PEER_PACKAGES)
    overrides: dict[str, Any]
    peer_of: str | None = None
    reason: str | None = None
    module: nn.Module | None = None  # built once (seeded, CPU, fp32); every case trains a copy

    def fresh(self) -> nn.Module:
        """A copy of the model as built, in train mode: every case starts from the same weights."""
        if self.module is None:
            torch.manual_seed(0)
            spec = ModelSpec(self.label, "preset" if self.kind == "ours" else "peer", self.name, self.overrides)
            self.module = load(spec).module
        return copy.deepcopy(self.module).train()


def label_of(name: str, overrides: dict[str, Any]) -> str:
    return f"{name}({','.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else name


def peer_entry(ours: Entry, all_peers: bool) -> Entry | None:
    """The peer row source of ``ours``: SpeechBrain's SepFormer (others with ``all_peers``), or None."""
    with torch.device("meta"):  # peer_spec reads the class and init args only
        module = build(ours.name, **ours.overrides)
    peer = PEER_OF_CLASS.get(type(module).__name__)
    if peer is None or (peer != TARGET_PEER and not all_peers):
        return None
    spec = peer_spec(LoadedModel(ModelSpec(ours.label, "preset", ours.name, ours.overrides), module,
                                 SEPARATOR_RATE, False))  # fmt: skip
    if isinstance(spec, str):
        return Entry(PEER_LABELS[peer], "peer", peer, {}, peer_of=ours.label, reason=spec)
    return Entry(spec.label, "peer", spec.name, spec.overrides, peer_of=ours.label)


def resolve_entries(args: argparse.Namespace) -> list[Entry]:
    """Our presets with their overrides, each followed by its peer when one is measured."""
    common, per_model = parse_overrides(args.override)
    entries = []
    for name in args.models:
        overrides = common | per_model.get(name, {})
        ours = Entry(label_of(name, overrides), "ours", name, overrides)
        entries.append(ours)
        peer = None if args.no_peers else peer_entry(ours, args.all_peers)
        entries += [peer] if peer else []
    return entries


def is_target(entry: Entry) -> bool:
    """Whether ``entry`` is our unmodified SepFormer or SpeechBrain's next to it."""
    return entry.label == TARGET_MODEL or (entry.name == TARGET_PEER and entry.peer_of == TARGET_MODEL)


@dataclass
class Case:
    """One row: an entry trained at one dtype, eager or compiled."""

    entry: Entry
    dtype: str
    compiled: bool

    def describe(self) -> dict[str, Any]:
        return {"model": self.entry.label, "kind": self.entry.kind, "dtype": self.dtype, "compile": self.compiled}


@dataclass
class Profile:
    """Where one eager step of an entry spends its time."""

    entry: Entry
    dtype: str

    def describe(self) -> dict[str, Any]:
        return {"profile": self.entry.label, "kind": self.entry.kind, "dtype": self.dtype, "compile": False}


def plan(entries: list[Entry], args: argparse.Namespace) -> list[Case | Profile]:
    """Eager cases, profiles, compiled cases; the targets' bf16 cases first within each phase."""
    cases = [Case(e, d, mode == "compile") for mode in args.compile_modes for e in entries for d in args.dtypes]
    cases.sort(key=lambda c: (c.compiled, not (is_target(c.entry) and c.dtype == TARGET_DTYPE)))
    dtype = TARGET_DTYPE if TARGET_DTYPE in args.dtypes else args.dtypes[0]
    wanted = set(args.profile_models or [])
    profiles = [Profile(e, dtype) for e in entries if wanted & {e.label, e.name}]
    eager = [c for c in cases if not c.compiled]
    return [*eager, *profiles, *[c for c in cases if c.compiled]]


# --- one training step -------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(model: nn.Module, batch: int, seconds: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """A seeded speech-level mixture ``[B, T]`` and random references ``[B, S, T]`` at 8 kHz."""
    generator = torch.Generator().manual_seed(0)
    samples = max(1, round(seconds * SEPARATOR_RATE))
    sources = int(getattr(model, "init_args", {}).get("num_sources", 2))
    mixture = SPEECH_LEVEL * torch.randn(batch, samples, generator=generator)
    references = SPEECH_LEVEL * torch.randn(batch, sources, samples, generator=generator)
    return mixture.to(device), references.to(device)


class TrainStep:
    """A training step of ``model`` on a fixed batch: forward (autocast), fp32 PIT SI-SNR, backward, Adam."""

    def __init__(self, model: nn.Module, dtype: str, compiled: bool, batch: tuple[Tensor, Tensor],
                 compile_mode: str) -> None:  # fmt: skip
        self.model = model
        self.forward_fn = (
            torch.compile(model, mode=None if compile_mode == "default" else compile_mode) if compiled else model
        )
        self.device_type = batch[0].device.type
        self.autocast = AUTOCAST[dtype]
        self.mixture, self.references = batch
        self.loss_fn = PITSISNRLoss()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == "fp16" else None

    def forward_loss(self) -> Tensor:
        """The model under autocast (as Lightning's mixed precision), the loss in float32."""
        context = (
            torch.autocast(self.device_type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        )
        with context:
            estimate = self.forward_fn(self.mixture)
        return self.loss_fn(estimate.float(), self.references)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def update(self) -> None:
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> Tensor:
        loss = self.forward_loss()
        self.backward(loss)
        self.update()
        return loss.detach()


def timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    """Seconds of one call of ``fn`` with the device synchronized before and after, and its result."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def time_steps(step: TrainStep, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Warm-up steps, then up to ``--steps`` timed steps within ``--case-seconds`` (at least one)."""
    warmup = [timed(step, device)[0] for _ in range(max(0, args.warmup))]
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, args.steps) and (not times or time.perf_counter() - start < args.case_seconds):
        seconds, loss = timed(step, device)
        times.append(seconds)
    median = statistics.median(times)
    return {"warmup_s": warmup, "times": times, "median": median, "loss": float(loss)}


# --- memory ------------------------------------------------------------------------------------------


def memory_start(device: torch.device) -> float | None:
    """Open a peak-memory window; the baseline in MiB, or None where it cannot be measured."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB
    if device.type == "cpu" and rss_supported():
        try:
            return start_peak_window()
        except OSError:
            return None
    return None


def memory_peak(device: torch.device, baseline: float | None) -> dict[str, Any]:
    """Peak memory of the window above its baseline: model, gradients, Adam state and activations."""
    if baseline is None:
        return {"peak_memory_mib": None, "memory": f"not measured: no peak counter for {device.type} here"}
    if device.type == "cuda":
        return {
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / MIB - baseline, 1),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / MIB, 1),
            "memory": "CUDA max allocated above the case's start",
        }
    return {"peak_memory_mib": round(peak_rss_mib() - baseline, 1),
            "memory": "peak RSS growth of this process over the case (freed heap reused can make it read low)"}


def release(device: torch.device, compiled: bool) -> None:
    """Free what a case left (compiled graphs, cached blocks) so the next one starts clean."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- a case ------------------------------------------------------------------------------------------


def empty_row(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    return case.describe() | {
        "peer_of": case.entry.peer_of, "batch": args.batch_size, "seconds": args.seconds, "status": "not run",
        "params": None, "step_median_s": None, "step_min_s": None, "step_max_s": None, "steps": 0,
        "steps_per_s": None, "audio_s_per_s": None, "peak_memory_mib": None, "memory": "not measured",
        "compile_s": None, "warmup_s": None, "loss": None,
    }  # fmt: skip


def cannot_run(entry: Entry, dtype: str, device: torch.device) -> str | None:
    """Why ``entry`` cannot train at ``dtype`` here, or None."""
    if entry.reason:
        return entry.reason
    if dtype == "fp16" and device.type != "cuda":
        return "fp16 is measured on CUDA only (with a gradient scaler, as Lightning's 16-mixed)"
    return None


def run_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train one case and return its row; any failure (build, compile, OOM) is an ``unsupported`` row."""
    row = empty_row(case, args)
    reason = cannot_run(case.entry, case.dtype, device)
    if reason:
        row["status"] = unsupported(reason)
        return row
    model = step = None
    try:
        baseline = memory_start(device)
        model = case.entry.fresh().to(device)
        row["params"] = sum(p.numel() for p in model.parameters())
        batch = random_batch(model, args.batch_size, args.seconds, device)
        step = TrainStep(model, case.dtype, case.compiled, batch, args.compile_mode)
        timing = time_steps(step, args, device)
        median = timing["median"]
        row |= memory_peak(device, baseline) | {
            "status": "ok", "step_median_s": median, "step_min_s": min(timing["times"]),
            "step_max_s": max(timing["times"]), "steps": len(timing["times"]), "steps_per_s": 1 / median,
            "audio_s_per_s": args.batch_size * args.seconds / median, "warmup_s": sum(timing["warmup_s"]),
            "loss": timing["loss"],
            "compile_s": sum(max(0.0, s - median) for s in timing["warmup_s"])
            if case.compiled and timing["warmup_s"] else None,
        }  # fmt: skip
    except Exception as err:  # noqa: BLE001 (a case that cannot run is a row saying why)
        row["status"] = unsupported(err)
    finally:
        model = step = batch = None  # before release(): an OOM's memory must be free for the next case
        release(device, case.compiled)
    return row


# --- profile: what limits a step ---------------------------------------------------------------------


def phase_times(step: TrainStep, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of forward + loss, backward and optimizer, synchronized between phases."""
    phases: dict[str, list[float]] = {"forward_loss_s": [], "backward_s": [], "optimizer_s": []}
    for _ in range(steps):
        seconds, loss = timed(step.forward_loss, device)
        phases["forward_loss_s"].append(seconds)
        phases["backward_s"].append(timed(lambda loss=loss: step.backward(loss), device)[0])
        phases["optimizer_s"].append(timed(step.update, device)[0])
    return {name: statistics.median(values) for name, values in phases.items()}


def step_flops(step: TrainStep) -> float:
    """FLOPs of one step (forward and backward; attention counted) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step.backward(step.forward_loss())
    step.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def kernel_stats(step: TrainStep, steps: int, device: torch.device) -> dict[str, Any]:
    """Per step: device kernel time and count, and the ops with the most self time (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    on_device = device.type == "cuda"
    kernels = [e for e in prof.events() if e.device_type != DeviceType.CPU]
    ops = [a for a in prof.key_averages() if a.device_type == DeviceType.CPU and not a.key.startswith("ProfilerStep")]

    def self_us(a: Any) -> float:
        return a.self_device_time_total if on_device else a.self_cpu_time_total

    total_us = sum(e.device_time_total for e in kernels) if on_device else sum(self_us(a) for a in ops)
    top = sorted(ops, key=self_us, reverse=True)[:TOP_OPS]
    return {
        "kernel_s_per_step": total_us / 1e6 / steps if on_device else None,
        "kernels_per_step": len(kernels) / steps if on_device else None,
        "top_ops": [{"name": a.key, "calls_per_step": a.count / steps, "self_s_per_step": self_us(a) / 1e6 / steps,
                     "share": self_us(a) / total_us if total_us else None} for a in top],  # fmt: skip
        "top_ops_time": "self device time (kernels)" if on_device else "self CPU time",
    }


@functools.cache
def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best MAC/s of a square matmul on ``device`` at ``dtype`` (measured once per run)."""
    return matmul_mac_per_s(device, dtype, MATMUL_SIZE.get(device.type, 512))


def run_profile(job: Profile, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Where an eager step goes: busy fraction of the device, phases, FLOP rate vs the device's matmul."""
    result = job.describe() | {"status": "ok", "batch": args.batch_size, "seconds": args.seconds}
    reason = cannot_run(job.entry, job.dtype, device)
    if reason:
        return result | {"status": unsupported(reason)}
    steps = max(1, args.profile_steps)
    model = step = None
    try:
        model = job.entry.fresh().to(device)
        step = TrainStep(model, job.dtype, False, random_batch(model, args.batch_size, args.seconds, device), "")
        for _ in range(max(1, args.warmup)):
            step()
        median = statistics.median(timed(step, device)[0] for _ in range(steps))
        phases = phase_times(step, steps, device)
        flops = step_flops(step)
        kernels = kernel_stats(step, steps, device)
        peak_mac_s = matmul_peak(device, AUTOCAST[job.dtype] or torch.float32)
        busy = kernels["kernel_s_per_step"]
        result |= {
            "step_median_s": median, **phases, "flops_per_step": flops, "tflop_per_s": flops / median / 1e12,
            "matmul_tflop_per_s": 2 * peak_mac_s / 1e12, "matmul_size": MATMUL_SIZE.get(device.type, 512),
            "roofline_fraction": flops / median / (2 * peak_mac_s),
            "device_busy_fraction": busy / median if busy is not None else None, **kernels,
        }  # fmt: skip
    except Exception as err:  # noqa: BLE001 (a profile that fails says why, the run goes on)
        result["status"] = unsupported(err)
    finally:
        model = step = None
        release(device, False)
    return result


# --- targets -----------------------------------------------------------------------------------------


def _bf16_row(rows: list[dict[str, Any]], kind: str, compiled: bool | None) -> dict[str, Any] | None:
    """The fastest ok bf16 row of our SepFormer (``kind='ours'``) or its peer; ``compiled=None``: either."""
    found = [
        r for r in rows if r["status"] == "ok" and r["dtype"] == TARGET_DTYPE and r["kind"] == kind
        and (compiled is None or r["compile"] == compiled)
        and (r["model"] == TARGET_MODEL if kind == "ours" else r["peer_of"] == TARGET_MODEL)
    ]  # fmt: skip
    return min(found, key=lambda r: r["step_median_s"]) if found else None


def _check(name: str, ratio: float | None, what: str) -> dict[str, Any]:
    """A target entry: the ratio, its threshold and whether it passes (None when not measured)."""
    target = TARGETS[name]
    passed = None if ratio is None else (ratio <= target if name.startswith("memory") else ratio >= target)
    return {"ratio": ratio, "target": target, "pass": passed, "means": what}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def compute_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Our SepFormer's bf16 training step against SpeechBrain's (same run): speed and memory ratios."""
    ours_eager, ours_best = _bf16_row(rows, "ours", False), _bf16_row(rows, "ours", None)
    peer_eager, peer_compiled = _bf16_row(rows, "peer", False), _bf16_row(rows, "peer", True)

    def get(row: dict[str, Any] | None, key: str) -> float | None:
        return row[key] if row else None

    checks = {
        "speed_vs_peer_eager": _check("speed_vs_peer_eager", _ratio(get(peer_eager, "step_median_s"),
                                      get(ours_eager, "step_median_s")),
                                      "SpeechBrain eager step / our eager step"),
        "speed_vs_peer_compiled": _check("speed_vs_peer_compiled", _ratio(get(peer_compiled, "step_median_s"),
                                         get(ours_best, "step_median_s")),
                                         "SpeechBrain compiled step / our faster step (eager or compiled)"),
        "memory_vs_peer": _check("memory_vs_peer", _ratio(get(ours_eager, "peak_memory_mib"),
                                 get(peer_eager, "peak_memory_mib")),
                                 "our eager peak memory / SpeechBrain's eager peak memory"),
    }  # fmt: skip
    missing = [name for name, row in (("ours eager", ours_eager), ("peer eager", peer_eager),
                                      ("peer compiled", peer_compiled)) if row is None]  # fmt: skip
    verdicts = [c["pass"] for c in checks.values()]
    return {
        "model": TARGET_MODEL, "peer": PEER_LABELS[TARGET_PEER], "dtype": TARGET_DTYPE,
        "ours_eager_step_s": get(ours_eager, "step_median_s"), "ours_best_step_s": get(ours_best, "step_median_s"),
        "ours_best_compiled": get(ours_best, "compile"), "peer_eager_step_s": get(peer_eager, "step_median_s"),
        "peer_compiled_step_s": get(peer_compiled, "step_median_s"), **checks,
        "status": "ok" if not missing else f"incomplete: no ok bf16 row for {', '.join(missing)}",
        "pass": None if None in verdicts else all(verdicts),
    }  # fmt: skip


# --- the run and its JSON ----------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    """Device, versions, threads and whether bf16 runs in hardware."""
    try:
        speechbrain: str | None = metadata.version("speechbrain")
    except metadata.PackageNotFoundError:
        speechbrain = None
    return {
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else cpu_name(), "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "bf16_native": bf16_native(device), "speechbrain": speechbrain,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }  # fmt: skip


class Run:
    """What the JSON holds so far; written after every item and by the hard-limit watchdog."""

    def __init__(self, args: argparse.Namespace, device: torch.device, items: list[Case | Profile]) -> None:
        self.args, self.device, self.start = args, device, time.perf_counter()
        self.pending = [item.describe() for item in items]
        self.rows: list[dict[str, Any]] = []
        self.profiles: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.stopped = False
        self.lock = threading.Lock()
        self.info = machine(device)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> dict[str, Any]:
        settings = {k: v for k, v in vars(self.args).items() if k != "out"}
        return {
            "schema": SCHEMA, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_s": round(self.elapsed(), 1), "stopped_at_hard_limit": self.stopped, "machine": self.info,
            "settings": settings, "results": self.rows, "profile": self.profiles, "skipped": self.skipped,
            "targets": compute_targets(self.rows),
        }  # fmt: skip

    def write(self) -> dict[str, Any]:
        summary = self.summary()
        atomic_write_text(Path(self.args.out), json.dumps(summary, indent=1))
        return summary


def start_watchdog(run: Run) -> threading.Timer:
    """At ``--hard-limit-s``: the running item becomes an ``unsupported`` row, the JSON is written, exit 0."""

    def stop() -> None:
        try:
            with run.lock:
                run.stopped = True
                if run.current is not None:
                    status = f"unsupported: stopped at the hard limit ({run.args.hard_limit_s:g} s) while running"
                    (run.profiles if "profile" in run.current else run.rows).append(run.current | {"status": status})
                run.skipped += run.pending
                summary = run.write()
            print(format_table(summary), flush=True)
            print(f"hard limit: wrote {run.args.out} in {summary['wall_s']} s", file=sys.stderr, flush=True)
        finally:
            os._exit(0)  # the main thread may be deep in a step or a compilation: end the process now

    timer = threading.Timer(max(0.0, run.args.hard_limit_s - run.elapsed()), stop)
    timer.daemon = True
    timer.start()
    return timer


def run_items(run: Run, items: list[Case | Profile]) -> None:
    """Run the items in order; once the budget is spent (after the first), list the rest as skipped."""
    for index, item in enumerate(items):
        with run.lock:
            run.pending.pop(0)
            if index and run.elapsed() > run.args.budget_s:
                run.skipped.append(item.describe())
                continue
            run.current = empty_row(item, run.args) if isinstance(item, Case) else item.describe()
        if isinstance(item, Case):
            result = run_case(item, run.args, run.device)
        else:
            result = run_profile(item, run.args, run.device)
        with run.lock:
            run.current = None
            (run.rows if isinstance(item, Case) else run.profiles).append(result)
            run.write()
        print(format_line(result), flush=True)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def format_line(result: dict[str, Any]) -> str:
    """One row of the table (a case) or the profile's summary line."""
    mode = "compile" if result["compile"] else "eager"
    if "profile" in result:
        if result["status"] != "ok":
            return f"profile {result['profile']} {result['dtype']}: {result['status']}"
        return (
            f"profile {result['profile']} {result['dtype']} eager: {_fmt(result['step_median_s'], 1e3)} ms/step "
            f"(forward+loss {_fmt(result['forward_loss_s'], 1e3)}, backward {_fmt(result['backward_s'], 1e3)}, "
            f"optimizer {_fmt(result['optimizer_s'], 1e3)} ms), device busy "
            f"{_fmt(result['device_busy_fraction'], 100, 0)} %, {_fmt(result['kernels_per_step'], 1, 0)} kernels, "
            f"{_fmt(result['flops_per_step'], 1e-12, 2)} TFLOP = {_fmt(result['tflop_per_s'], 1, 1)} TFLOP/s, "
            f"{_fmt(result['roofline_fraction'], 100, 1)} % of a {result['matmul_size']}^2 matmul; top: "
            + ", ".join(f"{op['name']} {_fmt(op['share'], 100, 0)} %" for op in result["top_ops"][:4])
        )
    status = "" if result["status"] == "ok" else result["status"]
    return (
        f"{result['model'][:34]:34} {result['kind']:4} {result['dtype']:5} {mode:7} "
        f"{_fmt(result['step_median_s'], 1e3):>9} {_fmt(result['steps_per_s'], 1, 2):>8} "
        f"{_fmt(result['peak_memory_mib']):>10} {_fmt(result['compile_s']):>9}  {status}"
    )


def format_table(summary: dict[str, Any]) -> str:
    """The rows, the profiles, the targets and what was skipped, as text."""
    machine_info = summary["machine"]
    lines = [
        f"training step, batch {summary['settings']['batch_size']} x {summary['settings']['seconds']:g} s, "
        f"{machine_info['device_name']}, torch {machine_info['torch']}",
        f"{'model':34} {'kind':4} {'dtype':5} {'mode':7} {'step ms':>9} {'steps/s':>8} {'peak MiB':>10} "
        f"{'compile s':>9}  status",
    ]
    lines += [format_line(row) for row in summary["results"]]
    lines += [format_line(profile) for profile in summary["profile"]]
    targets = summary["targets"]
    lines.append(f"targets ({targets['model']} vs {targets['peer']}, {targets['dtype']}): {targets['status']}")
    for name in TARGETS:
        check = targets[name]
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[check["pass"]]
        lines.append(f"  {name}: {_fmt(check['ratio'], 1, 2)} (target {check['target']:g}; {check['means']}): "
                     f"{verdict}")  # fmt: skip
    skipped = [s.get("model") or f"profile {s['profile']}" for s in summary["skipped"]]
    lines.append(f"skipped past the budget: {len(skipped)}" + (f" ({', '.join(dict.fromkeys(skipped))})"
                                                               if skipped else ""))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        items = plan(resolve_entries(args), args)
    except (ValueError, TypeError) as err:  # an unknown preset or a bad override: say so, write nothing
        print(f"gpu_train_bench: {err}", file=sys.stderr)
        return 2
    run = Run(args, device, items)
    run.write()  # a JSON exists from the start
    watchdog = start_watchdog(run)
    try:
        run_items(run, items)
    finally:
        watchdog.cancel()
    with run.lock:
        summary = run.write()
    print(format_table(summary), flush=True)
    print(f"wrote {args.out} in {summary['wall_s']} s; skipped: {len(summary['skipped'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
