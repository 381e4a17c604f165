"""How fast int8 can make each separator on this CPU: Amdahl's bound from an operator profile.

    python benchmarks/int8_bound.py [--models conv_tasnet_base,sepformer_base,resepformer_base]
                                    [--seconds 1,4] [--forwards 5] [--threads 2] [--target 1.5]

Dynamic int8 (:func:`audiosep.quantize.quantize_for_inference`) replaces only the matrix products of the
linear layers and ungrouped 1x1 convolutions; attention, norms, depthwise convolutions and the encoder stay
float32. ``torch.profiler`` splits the prepared fp32 forward into that quantizable share ``f`` and the
rest, and the int8 forward's int8 kernels give their measured speed-up ``s`` over the float32 products
they replace. The int8 model can then be at most ``1 / (1 - f)`` times faster (int8 products for free),
is bounded by ``1 / (1 - f + f / s)`` with this CPU's kernels, and reaching ``--target`` needs kernels
``f / (1 / target - (1 - f))`` times faster than float32 ("never" where even free products fall short).
Profiled self times include the profiler's per-call cost, which weighs on small inputs; where int8 runs
oneDNN's kernel (VNNI CPUs) our quantization pass counts as the rest, so ``s`` there is its kernel alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiosep.models import build  # noqa: E402
from audiosep.optimize import prepare_for_inference  # noqa: E402
from audiosep.quantize import quantize_for_inference  # noqa: E402

FLOAT_PRODUCTS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")  # linear layers (bmm: attention)
FLOAT_CONVS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::_convolution")


@dataclass
class Split:
    """Milliseconds per forward: all of it, and the part spent in the ops that int8 replaces / runs."""

    total_ms: float
    products_ms: float


@dataclass
class Bound:
    """One model and length: fp32 and int8 profiles, and what they allow."""

    fp32: Split
    int8: Split

    @property
    def fraction(self) -> float:
        """Share of the fp32 forward in products that int8 replaces."""
        return self.fp32.products_ms / self.fp32.total_ms

    @property
    def kernel_speedup(self) -> float:
        """The int8 kernels' speed-up over the float32 products they replace."""
        return self.fp32.products_ms / self.int8.products_ms

    @property
    def free_products_bound(self) -> float:
        """int8 over fp32 if the int8 products cost nothing."""
        return 1.0 / (1.0 - self.fraction)

    @property
    def kernel_bound(self) -> float:
        """int8 over fp32 with these kernels and the rest of the forward unchanged."""
        return 1.0 / (1.0 - self.fraction + self.fraction / self.kernel_speedup)

    def needed_kernel_speedup(self, target: float) -> float:
        """The kernel speed-up that makes the whole forward ``target`` times faster (inf: none does)."""
        room = 1.0 / target - (1.0 - self.fraction)
        return self.fraction / room if room > 0 else math.inf


def is_float_product(name: str, shapes: list[list[int]]) -> bool:
    """Whether a profiled op is a float matrix product int8 replaces: a linear layer's, or an ungrouped 1x1
    convolution's (input ``[B, C, M, 1]`` or ``[B, C, M]``, weight ``[C_out, C, 1(, 1)]``)."""
    if name in FLOAT_PRODUCTS:
        return True
    if name not in FLOAT_CONVS or len(shapes) < 2 or len(shapes[1]) < 3:
        return False
    x, weight = shapes[0], shapes[1]
    if name == "mkldnn::_convolution_pointwise_":  # in place: (total, x, weight, ...)
        x, weight = shapes[1], shapes[2] if len(shapes) > 2 else []
    return len(weight) >= 3 and all(k == 1 for k in weight[2:]) and len(x) >= 2 and x[1] == weight[1]


def is_int8_product(name: str) -> bool:
    """Whether a profiled op is one of the int8 kernels (torch's dynamic ones or oneDNN's)."""
    return name.startswith("quantized::") or name.startswith("onednn::qlinear")


def profile_split(model: nn.Module, mixture: torch.Tensor, forwards: int, int8: bool) -> Split:
    """Self time per forward, in all ops and in the matrix products int8 affects."""
    with torch.inference_mode():
        model(mixture), model(mixture)  # warm
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(forwards):
                model(mixture)
    total = products = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        total += event.self_cpu_time_total
        chosen = is_int8_product(event.key) if int8 else is_float_product(event.key, event.input_shapes)
        products += event.self_cpu_time_total if chosen else 0.0
    return Split(total / forwards / 1e3, products / forwards / 1e3)


def measure(name: str, seconds: float, forwards: int, **overrides: object) -> Bound:
    """fp32 and int8 profiles of preset ``name`` (with constructor ``overrides``) on ``seconds`` of 8 kHz noise."""
    plain = build(name, **overrides).eval()
    mixture = torch.randn(1, int(8000 * seconds))
    fp32 = profile_split(prepare_for_inference(plain), mixture, forwards, int8=False)
    int8 = profile_split(quantize_for_inference(plain), mixture, forwards, int8=True)
    return Bound(fp32, int8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv_tasnet_base,sepformer_base,resepformer_base")
    parser.add_argument("--seconds", default="1,4")
    parser.add_argument("--forwards", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads; "
          f"model, seconds, fp32 ms, int8 ms, quantizable share, int8 kernel speed-up, bounds, needed for "
          f"{args.target:g}x")  # fmt: skip
    for name in args.models.split(","):
        for seconds in (float(s) for s in args.seconds.split(",")):
            bound = measure(name, seconds, args.forwards)
            needed = bound.needed_kernel_speedup(args.target)
            print(f"{name} {seconds:g} s: fp32 {bound.fp32.total_ms:.1f} ms, int8 {bound.int8.total_ms:.1f} ms "
                  f"(profiled int8 / fp32 {bound.fp32.total_ms / bound.int8.total_ms:.2f}); quantizable "
                  f"{bound.fraction:.0%}, int8 kernels {bound.kernel_speedup:.2f}x the float products; bound "
                  f"{bound.kernel_bound:.2f}x with these kernels, {bound.free_products_bound:.2f}x with free ones; "
                  f"{args.target:g}x needs kernels {'never' if math.isinf(needed) else f'{needed:.2f}x'}")  # fmt: skip


if __name__ == "__main__":
    main()
