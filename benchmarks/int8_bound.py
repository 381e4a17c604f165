"""How fast int8 can make each separator on this CPU: Amdahl's bound, measured.

    python benchmarks/int8_bound.py [--models conv_tasnet_base,sepformer_base,resepformer_base]
                                    [--seconds 1,4] [--rounds 7] [--threads 2] [--target 1.5]

Dynamic int8 (:func:`audiosep.quantize.quantize_for_inference`) replaces only the matrix products of the
linear layers and ungrouped 1x1 convolutions; attention, norms, depthwise convolutions and the encoder stay
float32. Three variants of one model run interleaved, median of ``--rounds``: the prepared fp32 model
(``T32``), the int8 model (``T8``), and the prepared fp32 model with those products free (each returns a
cached zero tensor of its output's shape: ``Tfree``, what no int8 kernel can beat). Then the products are a
share ``f = 1 - Tfree / T32`` of the fp32 forward, the int8 kernels run them ``s = (T32 - Tfree) / (T8 - Tfree)``
times faster in the model, free products would give ``T32 / Tfree``, and ``--target`` needs kernels
``f / (1 / target - (1 - f))`` times faster than float32 ("never" where even free products fall short).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import audiosep.optimize as optimize  # noqa: E402
from audiosep.models import build  # noqa: E402
from audiosep.quantize import quantize_for_inference  # noqa: E402


@dataclass
class Bound:
    """Median seconds per forward of the three variants of one model and length."""

    fp32: float
    int8: float
    free: float

    @property
    def fraction(self) -> float:
        """Share of the fp32 forward in the products int8 replaces."""
        return 1.0 - self.free / self.fp32

    @property
    def kernel_speedup(self) -> float:
        """How much faster the int8 products run than the float32 ones, in the model."""
        return (self.fp32 - self.free) / (self.int8 - self.free) if self.int8 > self.free else math.inf

    @property
    def free_products_bound(self) -> float:
        """int8 over fp32 if the int8 products cost nothing."""
        return self.fp32 / self.free

    def needed_kernel_speedup(self, target: float) -> float:
        """The kernel speed-up that makes the whole forward ``target`` times faster (inf: none does)."""
        room = 1.0 / target - (1.0 - self.fraction)
        return self.fraction / room if room > 0 else math.inf


def zeros_cache() -> Callable[..., Tensor]:
    """``zeros(shape, channels_last=False)``: a zero tensor of that shape and layout, made once per shape (a free
    layer's output: what it costs is a lookup)."""
    zeros: dict[tuple, Tensor] = {}

    def cached(shape: tuple[int, ...], channels_last: bool = False) -> Tensor:
        key = (tuple(shape), channels_last)
        if key not in zeros:
            made = torch.zeros(shape)
            zeros[key] = made.contiguous(memory_format=torch.channels_last) if channels_last else made
        return zeros[key]

    return cached


@contextlib.contextmanager
def free_products() -> Iterator[None]:
    """Within the block, the prepared models' linear layers and ungrouped 1x1 convolutions return cached zeros
    of their output's shape instead of computing it (a sigmoid, which int8 applies as a pass, still runs; the
    rest of the forward runs as it is)."""
    zeros_like_output = zeros_cache()

    real_linear, real_conv_time, real_conv_add = optimize.FusedLinear.forward, optimize.conv_time, optimize.conv_add

    def linear(self: optimize.FusedLinear, x: Tensor) -> Tensor:
        return zeros_like_output((*x.shape[:-1], self.out_features), False)

    def conv_time(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none", slope: float = 0.0,
                  padding: int = 0, dilation: int = 1, groups: int = 1) -> Tensor:  # fmt: skip
        if weight.shape[2:] != (1, 1) or groups != 1 or padding != 0:  # not one int8 replaces (is_pointwise)
            return real_conv_time(x, weight, bias, activation, slope, padding, dilation, groups)
        out = zeros_like_output((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), True)
        return torch.sigmoid(out) if activation == "sigmoid" else out  # int8 runs its sigmoid as a pass too

    def conv_add(total: Tensor | None, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return conv_time(x, weight, bias) if total is None else total  # adding zeros

    optimize.FusedLinear.forward, optimize.conv_time, optimize.conv_add = linear, conv_time, conv_add
    try:
        yield
    finally:
        optimize.FusedLinear.forward, optimize.conv_time, optimize.conv_add = real_linear, real_conv_time, real_conv_add


def elapsed(call: Callable[[], object]) -> float:
    """Wall-clock seconds of one ``call()``."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(name: str, seconds: float, rounds: int, **overrides: object) -> Bound:
    """The three variants of preset ``name`` (with constructor ``overrides``) on ``seconds`` of 8 kHz noise,
    interleaved, each warmed before it is timed in every round."""
    plain = build(name, **overrides).eval()
    prepared, int8 = optimize.prepare_for_inference(plain), quantize_for_inference(plain)
    mixture = torch.randn(1, int(8000 * seconds))
    times: dict[str, list[float]] = {"fp32": [], "int8": [], "free": []}
    with torch.inference_mode():
        for _ in range(rounds):
            for variant, model in (("fp32", prepared), ("int8", int8), ("free", prepared)):
                with free_products() if variant == "free" else contextlib.nullcontext():
                    model(mixture)  # warm: another variant ran last
                    times[variant].append(elapsed(lambda m=model: m(mixture)))
    return Bound(**{variant: statistics.median(values) for variant, values in times.items()})


def _needed(value: float) -> str:
    return "never (free products fall short)" if math.isinf(value) else f"{value:.2f}x"


def bound_arguments(description: str) -> argparse.Namespace:
    """The options of this script and of ``fp32_bound.py``; sets the thread count and prints the run's header."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", default="conv_tasnet_base,sepformer_base,resepformer_base")
    parser.add_argument("--seconds", default="1,4")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, median of {args.rounds}")
    return args


def cases(args: argparse.Namespace) -> Iterator[tuple[str, float]]:
    """``(model, seconds)`` of every case ``args`` asks for."""
    for name in args.models.split(","):
        for seconds in args.seconds.split(","):
            yield name, float(seconds)


def main() -> None:
    args = bound_arguments(__doc__.splitlines()[0])
    for name, seconds in cases(args):
        b = measure(name, seconds, args.rounds)
        print(f"{name} {seconds:g} s: fp32 {b.fp32 * 1e3:.1f} ms, int8 {b.int8 * 1e3:.1f} ms (int8 / fp32 "
              f"{b.fp32 / b.int8:.2f}x), products free {b.free * 1e3:.1f} ms; products {b.fraction:.0%} of fp32, "
              f"int8 kernels {b.kernel_speedup:.2f}x the float ones; free products would give "
              f"{b.free_products_bound:.2f}x; {args.target:g}x needs kernels {_needed(b.needed_kernel_speedup(args.target))}")  # fmt: skip


if __name__ == "__main__":
    main()
