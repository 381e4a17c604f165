"""Tiny-Sepformer: parameter sharing, the CA layer against its formula, sizes, shapes, norms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from audiosep.models.sepformer import sepformer_base
from audiosep.models.tiny_sepformer import ConvAttentionLayer, TinySepformer, tiny_sepformer_base
from audiosep.nn.dual_path import SequenceStack, sinusoidal_encoding
from audiosep.nn.norms import NORM_NAMES

TINY = dict(
    encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=2, num_intra_layers=3,
    num_inter_layers=2, num_heads=2, attention_channels=8, conv_kernel_size=3, ffn_dim=24, chunk_size=10,
)  # fmt: skip


def tiny(**overrides: object) -> TinySepformer:
    torch.manual_seed(0)
    return TinySepformer(**(TINY | overrides)).eval()


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_base_preset_is_about_nine_times_smaller_than_sepformer() -> None:
    tiny_count, sepformer_count = count(tiny_sepformer_base()), count(sepformer_base())
    assert abs(tiny_count - 2.85e6) / 2.85e6 < 0.01
    assert 8.5 < sepformer_count / tiny_count < 9.5


def test_shared_layers_cost_no_parameters_per_repetition() -> None:
    assert count(tiny(num_intra_layers=1)) == count(tiny(num_intra_layers=6))
    assert count(tiny(share_layers=False, num_intra_layers=6)) > count(tiny(num_intra_layers=6))


def test_shared_stack_applies_its_one_layer_repeatedly() -> None:
    torch.manual_seed(0)
    layer = ConvAttentionLayer(12, 8, 2, 3, 24, 0.0).eval()
    stack = SequenceStack([layer], 12, repeats=3).eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        expected = x + sinusoidal_encoding(9, 12)
        for _ in range(3):
            expected = layer(expected)
        torch.testing.assert_close(stack(x), stack.norm(expected))


def reference_ca_layer(layer: ConvAttentionLayer, x: Tensor) -> Tensor:
    """The CA layer written out in float64 from the paper's description."""
    x = x.double()
    p = {name: value.double() for name, value in layer.state_dict().items()}
    split = layer.split[0]
    y = F.layer_norm(x, (x.shape[-1],), p["norm1.weight"], p["norm1.bias"], 1e-6)
    a, c = y[..., :split], y[..., split:]
    q, k, v = F.linear(a, p["attention.qkv.weight"], p["attention.qkv.bias"]).chunk(3, dim=-1)
    heads = layer.attention.num_heads
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    attended = F.linear(
        (weights @ v).transpose(1, 2).flatten(2), p["attention.out.weight"], p["attention.out.bias"]
    )
    depthwise = F.conv1d(
        c.transpose(1, 2), p["depthwise.weight"], p["depthwise.bias"], padding=1, groups=c.shape[-1]
    )
    convolved = F.linear(depthwise.transpose(1, 2), p["pointwise.weight"], p["pointwise.bias"])
    x = x + torch.cat((attended, convolved), dim=-1)
    hidden = F.relu(F.linear(F.layer_norm(x, (x.shape[-1],), p["norm2.weight"], p["norm2.bias"], 1e-6),
                             p["ffn.0.weight"], p["ffn.0.bias"]))  # fmt: skip
    return x + F.linear(hidden, p["ffn.3.weight"], p["ffn.3.bias"])


def test_ca_layer_matches_its_formula() -> None:
    torch.manual_seed(0)
    layer = ConvAttentionLayer(12, 8, 2, 3, 24, 0.0).eval()
    for param in layer.parameters():
        param.data.normal_()
    x = torch.randn(3, 11, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), reference_ca_layer(layer, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [1, 7, 333])
def test_output_has_the_input_length(length: int) -> None:
    with torch.no_grad():
        assert tiny(num_sources=3)(torch.randn(2, length)).shape == (2, 3, length)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_builds_and_trains(norm: str) -> None:
    if norm == "cumulative_ln":  # refused: not causal on overlapping chunks laid out chunk by chunk
        with pytest.raises(ValueError, match="cumulative_ln"):
            tiny(norm=norm)
        return
    model = tiny(norm=norm).train()
    model(torch.randn(2, 300)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"attention_channels": 12}, "attention_channels"), ({"conv_kernel_size": 4}, "odd"),
     ({"num_heads": 3}, "multiple of num_heads")],
)  # fmt: skip
def test_invalid_configuration_raises(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)
