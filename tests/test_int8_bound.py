"""benchmarks/int8_bound.py: the Amdahl arithmetic, the "free products" variant, and a run on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_scripts import TINY_SEPFORMER, load_benchmark

import audiosep.optimize as optimize
from audiosep.models import build

TINY_CONV_TASNET = {"enc_num_filters": 16, "enc_kernel_size": 8, "bottleneck_channels": 8, "hidden_channels": 12,
                    "skip_channels": 8, "num_layers": 2, "num_repeats": 1}  # fmt: skip


def _load():
    return load_benchmark("int8_bound")


def test_the_bounds_follow_amdahls_law() -> None:
    bound = _load()
    b = bound.Bound(fp32=100.0, int8=70.0, free=40.0)  # products 60 of 100 ms in fp32, 30 in int8
    assert b.fraction == pytest.approx(0.6) and b.kernel_speedup == pytest.approx(2.0)
    assert b.free_products_bound == pytest.approx(2.5)
    assert b.needed_kernel_speedup(1.5) == pytest.approx(0.6 / (1 / 1.5 - 0.4))
    assert math.isinf(bound.Bound(fp32=100.0, int8=90.0, free=70.0).needed_kernel_speedup(1.5))


def test_free_products_zero_the_linear_and_1x1_layers_only_and_restore_them() -> None:
    bound = _load()
    x = torch.randn(1, 16, 50, 1).contiguous(memory_format=torch.channels_last)
    pointwise, depthwise = torch.randn(8, 16, 1, 1), torch.randn(16, 1, 3, 1)
    linear = optimize.FusedLinear(torch.nn.Linear(16, 4))
    with torch.inference_mode():
        real = optimize.conv_time(x, depthwise, None, padding=1, groups=16)
        with bound.free_products():
            assert not optimize.conv_time(x, pointwise, None).any()
            assert optimize.conv_time(x, pointwise, None).shape == (1, 8, 50, 1)
            assert torch.equal(optimize.conv_time(x, depthwise, None, padding=1, groups=16), real)
            assert not linear(torch.randn(3, 16)).any() and linear(torch.randn(3, 16)).shape == (3, 4)
        assert linear(torch.ones(3, 16)).any() and optimize.conv_time(x, pointwise, None).any()


@pytest.mark.parametrize(("name", "overrides"), [("conv_tasnet_base", TINY_CONV_TASNET), ("sepformer_base", TINY_SEPFORMER)])
def test_a_model_with_free_products_computes_something_else(name: str, overrides: dict) -> None:
    """The patch reaches the prepared model's products (else the bound would be the model itself)."""
    bound = _load()
    prepared = optimize.prepare_for_inference(build(name, **overrides).eval())
    mixture = torch.randn(1, 800)
    with torch.inference_mode():
        real = prepared(mixture)
        with bound.free_products():
            free = prepared(mixture)
        assert free.shape == real.shape and not torch.allclose(free, real)
        assert torch.equal(prepared(mixture), real)
    measured = bound.measure(name, 0.1, rounds=1, **overrides)
    assert min(measured.fp32, measured.int8, measured.free) > 0
