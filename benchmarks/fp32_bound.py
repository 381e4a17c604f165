"""How fast float32 can make each separator against its peer on this CPU: where the time goes, measured.

    python benchmarks/fp32_bound.py [--models conv_tasnet_base,sepformer_base,resepformer_base]
                                    [--seconds 1,4] [--rounds 7] [--threads 2] [--target 1.5]

Four variants run interleaved, median of ``--rounds``, each warmed before it is timed in every round: the
prepared model (``T``), the same with attention free (every head returns cached zeros: ``Tatt``, what no
attention kernel can beat), the same with attention and the matrix products of its linear layers and 1x1
convolutions free (``Trest``: norms, activations, sums, the encoder, the decoder), and the peer
(``Tpeer``, as ``audiosep bench --peers`` builds it). One more timed pass runs only the exponentials that
exact softmax attention must take: ``exp`` over a score tensor of each attention call's shape
(``Texp``: no float32 attention kernel that computes every score's exponential can beat it).

From those, with ``R`` the best 2048 x 2048 float32 matmul rate of the rounds and the model's MACs (every
conv and attention counted, as the bench counts them):

- the products run at ``MACs_products / (Tatt - Trest)``, a share of ``R``;
- attention at its exponential floor with everything else as it is: ``Tpeer / (Tatt + Texp)`` against the
  peer, ``MACs / R / (Tatt + Texp)`` of the roofline;
- the limit of any implementation that does the same arithmetic: products at ``R``, nothing else but the
  exponentials: ``Tpeer / (MACs_products / R + Texp)``;
- the attention speed-up that ``--target`` times the peer needs, everything else as it is ("never" where
  free attention falls short).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from int8_bound import bound_arguments, cases, elapsed, free_products, zeros_cache  # noqa: E402

import audiosep.optimize as optimize  # noqa: E402
from audiosep.bench.measure import matmul_mac_per_s  # noqa: E402
from audiosep.bench.models import ModelSpec, example_inputs, load, peer_spec  # noqa: E402
from audiosep.cost import count_macs  # noqa: E402
from audiosep.nn.attention import MultiHeadSelfAttention  # noqa: E402


@dataclass
class Case:
    """Median seconds of each variant of one model and length, its MACs and the roofline (MAC/s)."""

    ours: float
    free_attention: float
    rest: float
    peer: float
    exp: float
    macs: float
    attention_macs: float
    roofline: float

    @property
    def products_macs(self) -> float:
        return self.macs - self.attention_macs

    @property
    def products_speed(self) -> float:
        """The products' rate in the model, as a share of the roofline."""
        seconds = self.free_attention - self.rest
        return self.products_macs / seconds / self.roofline if seconds > 0 else math.inf

    @property
    def attention_share(self) -> float:
        return 1.0 - self.free_attention / self.ours

    def at_exp_floor(self) -> tuple[float, float]:
        """(peer / ours, roofline fraction) with attention as fast as its exponentials alone."""
        seconds = self.free_attention + self.exp
        return self.peer / seconds, self.macs / self.roofline / seconds

    def arithmetic_limit(self) -> float:
        """peer / ours of an implementation whose products run at the roofline and whose only other cost is the
        attention's exponentials."""
        return self.peer / (self.products_macs / self.roofline + self.exp)

    def needed_attention_speedup(self, target: float) -> float:
        """How much faster attention must run for ``target`` x the peer (inf: even free attention falls short)."""
        room = self.peer / target - self.free_attention
        return (self.ours - self.free_attention) / room if room > 0 else math.inf


@contextlib.contextmanager
def free_attention() -> Iterator[None]:
    """Within the block, every audiosep attention head returns cached zeros of its output's shape."""
    zeros = zeros_cache()
    real = {cls: cls.attend for cls in (MultiHeadSelfAttention, optimize.ShortSequenceAttention)}

    def attend(self: MultiHeadSelfAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return zeros(q.shape)

    for cls in real:
        cls.attend = attend
    try:
        yield
    finally:
        for cls, method in real.items():
            cls.attend = method


def attention_shapes(model: torch.nn.Module, mixture: Tensor) -> list[tuple[int, ...]]:
    """``[B, H, L, D]`` of every attention call of one forward of ``model``, from a forward hook on each attention
    layer (a patched ``attend`` counted the calls that fall back to the fused kernel twice: diff review)."""
    shapes: list[tuple[int, ...]] = []

    def record(layer: MultiHeadSelfAttention, args: tuple[Tensor, ...], output: Tensor) -> None:
        batch, length, dim = args[0].shape
        shapes.append((batch, layer.num_heads, length, dim // layer.num_heads))

    layers = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        model(mixture)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def exp_pass(shapes: list[tuple[int, ...]]) -> Callable[[], None]:
    """The exponentials of the scores of each attention call in ``shapes``, into preallocated outputs."""
    scores = {(b, h, n, n): torch.randn(b, h, n, n) for b, h, n, _ in shapes}
    outputs = {shape: torch.empty_like(tensor) for shape, tensor in scores.items()}
    order = [(b, h, n, n) for b, h, n, _ in shapes]

    def run() -> None:
        for shape in order:
            torch.exp(scores[shape], out=outputs[shape])

    return run


def measure(name: str, seconds: float, rounds: int) -> Case:
    """The variants of preset ``name`` and its peer on ``seconds`` of the bench's seeded input, interleaved."""
    ours = load(ModelSpec(name, "preset", name))
    spec = peer_spec(ours)
    if isinstance(spec, str):
        raise SystemExit(f"{name}: {spec}")
    peer = load(spec).module
    (mixture,) = example_inputs(ours, 1, seconds)
    prepared = optimize.prepare_for_inference(ours.module)
    macs = count_macs(ours.module, mixture)
    times: dict[str, list[float]] = {key: [] for key in ("ours", "free_attention", "rest", "peer", "exp")}
    roofline = 0.0
    with torch.inference_mode():
        shapes = attention_shapes(prepared, mixture)
        exps = exp_pass(shapes)
        variants: dict[str, tuple[Callable[[], object], Callable[[], contextlib.AbstractContextManager]]] = {
            "ours": (lambda: prepared(mixture), contextlib.nullcontext),
            "free_attention": (lambda: prepared(mixture), free_attention),
            "rest": (lambda: prepared(mixture), lambda: _both(free_attention(), free_products())),
            "peer": (lambda: peer(mixture), contextlib.nullcontext),
            "exp": (exps, contextlib.nullcontext),
        }
        for _ in range(rounds):
            for key, (call, context) in variants.items():
                with context():
                    call()  # warm: another variant ran last
                    times[key].append(elapsed(call))
            roofline = max(roofline, matmul_mac_per_s(torch.device("cpu"), repeats=2))
    attention_macs = sum(2.0 * b * h * n * n * d for b, h, n, d in shapes)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return Case(**medians, macs=macs, attention_macs=attention_macs, roofline=roofline)


@contextlib.contextmanager
def _both(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager) -> Iterator[None]:
    with first, second:
        yield


def _times(value: float) -> str:
    return "never (free attention falls short)" if math.isinf(value) else f"{value:.2f}x"


def main() -> None:
    args = bound_arguments(__doc__.splitlines()[0])
    for name, seconds in cases(args):
        c = measure(name, seconds, args.rounds)
        head = (f"{name} {seconds:g} s: ours {c.ours * 1e3:.1f} ms, peer {c.peer * 1e3:.1f} ms (peer / ours "
                f"{c.peer / c.ours:.2f}, roofline {c.macs / c.roofline / c.ours:.0%} of {c.roofline / 1e9:.1f} "
                f"GMAC/s); products {(c.free_attention - c.rest) * 1e3:.1f} ms at {c.products_speed:.0%} of the "
                f"roofline; the rest {c.rest * 1e3:.1f} ms")  # fmt: skip
        if not c.attention_macs:
            print(f"{head}; products at the roofline and nothing else: peer / ours {c.arithmetic_limit():.2f}")
            continue
        ratio, fraction = c.at_exp_floor()
        print(f"{head}; attention {c.attention_share:.0%} of ours, its exponentials {c.exp * 1e3:.1f} ms. "
              f"Attention at its exponential floor: peer / ours {ratio:.2f}, "
              f"roofline {fraction:.0%}; products at the roofline and nothing but the exponentials: peer / "
              f"ours {c.arithmetic_limit():.2f}; {args.target:g}x the peer needs attention "
              f"{_times(c.needed_attention_speedup(args.target))} faster")  # fmt: skip


if __name__ == "__main__":
    main()
