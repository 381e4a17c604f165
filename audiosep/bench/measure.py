"""Measurements: the machine's matmul roofline, MACs, and interleaved latency with its spread.

Why interleaved: on a shared machine load comes and goes; timing every runner of a case in one
loop, one pass each per round, exposes them to the same load, so that their ratio stays honest
even when absolute times move. Why the roofline: a latency means little across machines, a
fraction of the machine's own fp32 matmul MAC/s (2048 x 2048, best of several, same threads) does.
The benchmark times that matmul as one more entry of every interleaved round, so each case is set
against the throughput the machine had while the case ran (a shared VM's drifts by up to 1.5x within
one run), not only against a figure taken once at the start.
"""

from __future__ import annotations

import copy
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

MATMUL_SIZE = 2048
# An emulated bf16 / fp16 matmul runs at ~0.7 GMAC/s on an AVX2 EPYC: 2048**3 MACs took 13 s a pass (80 s of
# every bench run with --dtypes bf16); its figure is informational (rooflines are fp32's), so a smaller one.
EMULATED_MATMUL_SIZE = 512
MIN_REPEATS, MAX_REPEATS = 3, 30
WARMUP_PASSES, WARMUP_SECONDS = 3, 0.5
MACS_CHECK_SECONDS = 0.5  # the meta-device count is checked against a real one at this length


# --- the machine -------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware (else they are emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    mkldnn = torch.backends.mkldnn.is_available()
    try:
        mkldnn = mkldnn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return mkldnn and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_pass(device: torch.device, dtype: torch.dtype = torch.float32, size: int = MATMUL_SIZE) -> Callable[[], Tensor]:
    """One ``size`` x ``size`` matmul (``size**3`` MACs) into a preallocated output: the roofline's pass.

    The output is allocated once so that the pass times the multiplication, not the page faults of a
    fresh 16 MiB buffer.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    return functools.partial(torch.mm, a, b, out=torch.empty_like(a))


def matmul_mac_per_s(device: torch.device, dtype: torch.dtype = torch.float32, size: int = MATMUL_SIZE,
                     repeats: int = 5) -> float:  # fmt: skip
    """Best MAC/s of a ``size`` x ``size`` matmul (``size**3`` MACs) at the current thread count."""
    matmul = matmul_pass(device, dtype, size)
    matmul()  # warm-up
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        matmul()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return size**3 / best


def machine_info(device: torch.device, threads: int, dtypes: Sequence[torch.dtype]) -> dict[str, Any]:
    """Device, threads, versions, fp32 (and bf16 / fp16 when benchmarked) matmul MAC/s, bf16 support."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    flags = cpu_flags()
    info: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "cpu_flags": sorted(
            flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"}
        ),
        "bf16_native": bf16_native(device),
        "matmul_size": MATMUL_SIZE,
        "matmul_fp32_mac_per_s": matmul_mac_per_s(device),
    }
    for dtype in dtypes:
        if dtype != torch.float32:
            size = MATMUL_SIZE if dtype_native(dtype, device) else EMULATED_MATMUL_SIZE
            info[f"matmul_{DTYPE_NAMES[dtype]}_size"] = size
            info[f"matmul_{DTYPE_NAMES[dtype]}_mac_per_s"] = matmul_mac_per_s(device, dtype, size)
    return info


def dtype_native(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``dtype``'s matmuls run in hardware on ``device`` (fp32 always; bf16 per :func:`bf16_native`;
    fp16 on CUDA or a CPU with AVX-512 FP16 or AMX FP16)."""
    if dtype == torch.float32 or device.type == "cuda":
        return True
    if dtype == torch.bfloat16:
        return bf16_native(device)
    return bool(cpu_flags() & {"avx512_fp16", "amx_fp16"})


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# --- MACs --------------------------------------------------------------------------------------


def _meta_macs(meta: nn.Module, inputs: tuple[Tensor, ...]) -> float:
    """MACs of ``meta`` (a model on the meta device): shapes only, no arithmetic, so any length is free.

    On the meta device attention runs the math path, whose matmuls the counter sees.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(*(x.to("meta") for x in inputs))
    return counter.get_total_flops() / 2


def count_macs_at(model: nn.Module, make_inputs: Callable[[float], tuple[Tensor, ...]],
                  lengths: Sequence[float], reference: bool = True) -> tuple[dict[float, float], str]:  # fmt: skip
    """MACs of ``model`` (plain, fp32, CPU) at each length, and how they were counted (``meta``/``cpu``).

    Counted on the meta device when that agrees (to 1e-6) with :func:`audiosep.cost.count_macs`
    on real tensors at a short length (``reference=True``, for our models; a peer's attention may
    be a fused op that count_macs cannot see, so its meta count is used as is); otherwise with
    count_macs at every length.
    """
    from audiosep.cost import count_macs

    try:
        meta = copy.deepcopy(model).to("meta")
        if reference:
            short = min(MACS_CHECK_SECONDS, min(lengths))
            counted, on_meta = count_macs(model, *make_inputs(short)), _meta_macs(meta, make_inputs(short))
            if not math.isclose(counted, on_meta, rel_tol=1e-6):
                raise ValueError(f"meta count {on_meta:.6g} != {counted:.6g}")
        return {s: _meta_macs(meta, make_inputs(s)) for s in lengths}, "meta"
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        return {s: count_macs(model, *make_inputs(s)) for s in lengths}, "cpu"


# --- latency -----------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock seconds of the timed passes (after warm-up) and process CPU seconds."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    cpu_median: float
    repeats: int

    @classmethod
    def of(cls, walls: Sequence[float], cpus: Sequence[float]) -> Timing:
        q1, _, q3 = (
            statistics.quantiles(walls, n=4, method="inclusive") if len(walls) > 1 else (walls[0],) * 3
        )
        return cls(
            statistics.median(walls), min(walls), max(walls), q1, q3, statistics.median(cpus), len(walls)
        )

    def latency_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k not in ("cpu_median", "repeats")}


def timed(
    fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], device: torch.device
) -> tuple[Tensor, float, float]:
    """``(output, wall seconds, process CPU seconds)`` of one pass."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    output = fn(*inputs)
    _sync(device)
    return output, time.perf_counter() - wall, time.process_time() - cpu


def warm_up(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], device: torch.device,
            min_passes: int = 1) -> tuple[Tensor, float]:  # fmt: skip
    """Untimed passes until ``min_passes`` are done and either 3 or 0.5 s (first-pass caches and
    allocations settle); returns the last output and the last pass's wall time."""
    elapsed, passes = 0.0, 0
    while passes < min_passes or (passes < WARMUP_PASSES and elapsed < WARMUP_SECONDS):
        output, wall, _ = timed(fn, inputs, device)
        elapsed, passes = elapsed + wall, passes + 1
    return output, wall


def adaptive_repeats(round_seconds: float, budget_s: float) -> int:
    """Timed rounds that fit ``budget_s`` (one round = one pass of every runner), within 3..30."""
    return max(MIN_REPEATS, min(MAX_REPEATS, int(budget_s / max(round_seconds, 1e-6))))


def time_interleaved(
    fns: dict[Any, Callable[[], Tensor]], repeats: int, device: torch.device
) -> dict[Any, Timing]:
    """Time ``repeats`` rounds, each one pass of every ``fns`` entry in turn (no-argument callables)."""
    walls: dict[Any, list[float]] = {key: [] for key in fns}
    cpus: dict[Any, list[float]] = {key: [] for key in fns}
    with torch.inference_mode():
        for _ in range(repeats):
            for key, fn in fns.items():
                _, wall, cpu = timed(fn, (), device)
                walls[key].append(wall)
                cpus[key].append(cpu)
    return {key: Timing.of(walls[key], cpus[key]) for key in fns}
