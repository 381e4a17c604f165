"""benchmarks/fp32_bound.py: the bound arithmetic, the "free attention" variant, the exponential floor, a run."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_scripts import TINY_SEPFORMER, load_benchmark

import audiosep.optimize as optimize
from audiosep.models import build


def _load():
    return load_benchmark("fp32_bound")


def test_the_bounds_follow_from_the_variants() -> None:
    bound = _load()
    # 100 ms; 70 without attention; 20 without attention and products; peer 120; exps 10 ms;
    # 5e9 MACs of which 1e9 attention, roofline 1e11 MAC/s
    c = bound.Case(ours=0.1, free_attention=0.07, rest=0.02, peer=0.12, exp=0.01, macs=5e9, attention_macs=1e9,
                   roofline=1e11)  # fmt: skip
    assert c.attention_share == pytest.approx(0.3)
    assert c.products_speed == pytest.approx(4e9 / 0.05 / 1e11)
    ratio, fraction = c.at_exp_floor()
    assert ratio == pytest.approx(0.12 / 0.08) and fraction == pytest.approx(5e9 / 1e11 / 0.08)
    assert c.arithmetic_limit() == pytest.approx(0.12 / (4e9 / 1e11 + 0.01))
    assert c.needed_attention_speedup(1.5) == pytest.approx(0.03 / (0.08 - 0.07))
    assert math.isinf(c.needed_attention_speedup(2.0))  # 60 ms: less than free attention leaves


def test_free_attention_zeroes_every_head_and_restores_them() -> None:
    bound = _load()
    prepared = optimize.prepare_for_inference(build("sepformer_base", **TINY_SEPFORMER).eval())
    plain = build("sepformer_base", **TINY_SEPFORMER).eval()
    mixture = torch.randn(1, 800)
    q = k = v = torch.randn(2, 2, 5, 8)
    with torch.inference_mode():
        real = prepared(mixture)
        with bound.free_attention():
            attention = plain.masker.blocks[0].intra.layers[0].attention
            assert not attention.attend(q, k, v).any() and attention.attend(q, k, v) is attention.attend(q, k, v)
            free = prepared(mixture)
        assert free.shape == real.shape and not torch.allclose(free, real)
        assert torch.equal(prepared(mixture), real)


@pytest.mark.parametrize("chunk_size", [20, optimize.SHORT_ATTENTION_MAX + 36])  # matmul path; the fused kernel
def test_attention_shapes_and_their_exponentials(chunk_size: int) -> None:
    """Each attention call once (calls that fell back to the fused kernel were counted twice: diff review)."""
    bound = _load()
    prepared = optimize.prepare_for_inference(build("sepformer_base", **TINY_SEPFORMER | {"chunk_size": chunk_size}).eval())
    with torch.inference_mode():
        shapes = bound.attention_shapes(prepared, torch.randn(1, 8 * 4 * chunk_size))
        assert len(shapes) == 2  # one intra and one inter layer
        assert all(len(s) == 4 and s[1] == 2 and s[3] == 8 for s in shapes)  # 2 heads of 16 / 2
        assert chunk_size in {s[2] for s in shapes}  # the intra layer attends over chunks of chunk_size frames
        bound.exp_pass(shapes)()


def test_a_run_against_the_peer() -> None:
    pytest.importorskip("speechbrain")
    bound = _load()
    case = bound.measure("resepformer_base", 0.05, rounds=1)
    assert min(case.ours, case.free_attention, case.rest, case.peer, case.exp) > 0
    assert case.attention_macs > 0 and case.macs > case.attention_macs and case.roofline > 0
