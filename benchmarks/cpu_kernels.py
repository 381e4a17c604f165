"""Which matrix-product kernels the inference transform should use on this CPU: an interleaved A/B.

    python benchmarks/cpu_kernels.py [--models sepformer_base,resepformer_base] [--seconds 1,4,16]
                                     [--rounds 10] [--threads 2]

``models``: each model prepared by :func:`audiosep.optimize.prepare_for_inference` runs with
:data:`audiosep.optimize.ONEDNN_MATMULS` True (oneDNN's fused linear layers, torch's fused attention) and
False (``F.linear``, ``matmul`` + softmax for short sequences), alternating every round; prints the median
latency of each and their ratio. ``attention``: the fused kernel against ``matmul`` + softmax on
``[B, 8, L, D/H]`` heads of 256k values, per sequence length ``L``. The transform picks by CPU
capability (AVX-512 or not), so run this on a new kind of CPU before trusting that choice there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import audiosep.optimize as optimize
from audiosep.models import build


def seconds_of(call: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def model_ab(name: str, lengths: list[float], rounds: int) -> None:
    """Median latency with oneDNN kernels (A) and the MKL/matmul ones (B), interleaved, per input length."""
    prepared = optimize.prepare_for_inference(build(name).eval())
    for seconds in lengths:
        mixture = torch.randn(1, int(8000 * seconds))
        times: dict[bool, list[float]] = {True: [], False: []}
        with torch.inference_mode():
            for _ in range(rounds):
                for onednn in (True, False):
                    optimize.ONEDNN_MATMULS = onednn
                    prepared(mixture)  # warm: the other kernel ran last
                    times[onednn].append(seconds_of(lambda x=mixture: prepared(x)))
        a, b = (statistics.median(times[k]) for k in (True, False))
        print(f"{name} {seconds:g} s: oneDNN {a * 1e3:.1f} ms, F.linear/matmul {b * 1e3:.1f} ms, "
              f"oneDNN / F.linear {a / b:.3f}")  # fmt: skip


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` as two matrix products and a softmax."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attention_ab(rounds: int) -> None:
    """The fused attention kernel against matmul + softmax per sequence length (non-causal, 8 heads)."""
    for head_dim in (16, 32):
        for length in (8, 16, 32, 64, 128, 256):
            batch = max(1, (1 << 18) // (length * 8 * head_dim))
            heads = torch.randn(batch, length, 3, 8, head_dim).permute(2, 0, 3, 1, 4)  # as the layer's views
            times: dict[str, list[float]] = {"fused": [], "matmul": []}
            with torch.inference_mode():
                for _ in range(rounds):
                    times["fused"].append(seconds_of(lambda h=heads: F.scaled_dot_product_attention(*h)))
                    times["matmul"].append(seconds_of(lambda h=heads: explicit_attention(*h)))
            fused, matmul = (statistics.median(times[k]) for k in ("fused", "matmul"))
            print(f"attention heads of {head_dim}, {length} positions, batch {batch}: fused {fused * 1e3:.2f} ms, "
                  f"matmul + softmax {matmul * 1e3:.2f} ms, fused / matmul {fused / matmul:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sepformer_base,resepformer_base,tiny_sepformer_base")
    parser.add_argument("--seconds", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, transform picks "
          f"{'oneDNN' if optimize.ONEDNN_MATMULS else 'F.linear/matmul'}, {args.threads} threads")  # fmt: skip
    attention_ab(args.rounds)
    for name in args.models.split(","):
        model_ab(name, [float(s) for s in args.seconds.split(",")], args.rounds)


if __name__ == "__main__":
    main()
