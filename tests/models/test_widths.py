"""Per-layer widths (a channel-pruned model): each layer gets its width, and the model rebuilds
from its checkpoint with no extra arguments.

SepFormer, RE-SepFormer and Tiny-Sepformer take ``ffn_dim`` (and Tiny-Sepformer ``conv_channels``)
as one int or one width per layer, in :func:`transformer_layers` order; QuartzNet takes one spec
(with its channels) per block.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from audiosep.checkpoint import load_model, save_model
from audiosep.models.quartznet import QuartzNet
from audiosep.models.resepformer import RESepFormer
from audiosep.models.sepformer import SepFormer
from audiosep.models.tiny_sepformer import ConvAttentionLayer, TinySepformer
from audiosep.nn.attention import TransformerLayer
from audiosep.nn.dual_path import transformer_layers

DIM = 16  # encoder and model width
CONV_PATH = 8  # Tiny-Sepformer: DIM - attention_channels
COMMON = dict(encoder_channels=DIM, kernel_size=8, num_heads=2, chunk_size=10)
SEPFORMER = COMMON | dict(model_channels=DIM, num_blocks=2, num_intra_layers=1, num_inter_layers=2)
RESEPFORMER = COMMON | dict(num_blocks=2, num_intra_layers=2, num_inter_layers=1)
TINY = COMMON | dict(
    model_channels=DIM, num_blocks=2, num_intra_layers=2, num_inter_layers=1, attention_channels=8,
    conv_kernel_size=3,
)  # fmt: skip

# name -> (class, fixed arguments, number of layers that take a width)
FAMILY: dict[str, tuple[type[nn.Module], dict[str, Any], int]] = {
    "sepformer": (SepFormer, SEPFORMER, 2 * (1 + 2)),
    "resepformer": (RESepFormer, RESEPFORMER, 2 * 2 + 1 * 1),
    "tiny_shared": (TinySepformer, TINY, 2 * 2),
    "tiny_distinct": (TinySepformer, TINY | {"share_layers": False}, 2 * (2 + 1)),
}
FFN_WIDTHS = [36, 8, 21, 40, 13, 27]  # all different; the first n are used
CONV_WIDTHS = [3, 8, 1, 6, 5, 2]


def build(name: str, **widths: Any) -> nn.Module:
    cls, fixed, _ = FAMILY[name]
    torch.manual_seed(0)
    return cls(**fixed, **widths).eval()


def irregular_widths(name: str) -> dict[str, list[int]]:
    count = FAMILY[name][2]
    widths = {"ffn_dim": FFN_WIDTHS[:count]}
    if name.startswith("tiny"):
        widths["conv_channels"] = CONV_WIDTHS[:count]
    return widths


def mixture() -> Tensor:
    return torch.randn(2, 800, generator=torch.Generator().manual_seed(1))  # 0.1 s at 8 kHz


def assert_round_trips(model: nn.Module, tmp_path: Path, run: Callable[[nn.Module], Any]) -> None:
    save_model(model, tmp_path / "model.pt", {"sample_rate": 8000})
    loaded, metadata = load_model(tmp_path / "model.pt")
    assert metadata == {"sample_rate": 8000}
    assert type(loaded) is type(model) and loaded.init_args == model.init_args
    with torch.no_grad():
        ours, theirs = as_tuple(run(model)), as_tuple(run(loaded))
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def as_tuple(output: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return output if isinstance(output, tuple) else (output,)


@pytest.mark.parametrize("name", FAMILY)
def test_irregular_widths_reach_every_layer_and_round_trip(name: str, tmp_path: Path) -> None:
    widths = irregular_widths(name)
    model = build(name, **widths)
    layers = transformer_layers(model)
    assert [layer.ffn_dim for layer in layers] == widths["ffn_dim"]
    for layer, ffn_dim in zip(layers, widths["ffn_dim"], strict=True):
        assert layer.ffn[0].weight.shape == (ffn_dim, DIM) and layer.ffn[3].weight.shape == (DIM, ffn_dim)
    for layer, kept in zip(layers, widths.get("conv_channels", [None] * len(layers)), strict=True):
        if kept is None:  # no conv path
            continue
        assert layer.conv_channels == kept and layer.depthwise.weight.shape == (kept, 1, 3)
        assert layer.pointwise.weight.shape == (CONV_PATH, kept)
    with torch.no_grad():
        assert model(mixture()).shape == (2, 2, 800)
    assert_round_trips(model, tmp_path, lambda m: m(mixture()))


@pytest.mark.parametrize("name", FAMILY)
def test_layer_order_is_the_modules_order(name: str) -> None:
    model = build(name)
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer | ConvAttentionLayer)]
    assert [id(m) for m in transformer_layers(model)] == [id(m) for m in layers]
    assert len(layers) == FAMILY[name][2]


def test_documented_order_sepformer_block_by_block_resepformer_intra_first() -> None:
    sepformer, resepformer = build("sepformer"), build("resepformer")
    blocks = sepformer.masker.blocks
    expected = [layer for block in blocks for stack in (block.intra, block.inter) for layer in stack.layers]
    assert expected[0] is blocks[0].intra.layers[0] and expected[1] is blocks[0].inter.layers[0]
    assert transformer_layers(sepformer) == expected
    masker = resepformer.masker
    expected = [*masker.intra[0].layers, *masker.intra[1].layers, *masker.inter[0].layers]
    assert transformer_layers(resepformer) == expected


WIDTH_ARGUMENTS = [(name, "ffn_dim") for name in FAMILY] + [
    (name, "conv_channels") for name in FAMILY if name.startswith("tiny")
]


@pytest.mark.parametrize(("name", "argument"), WIDTH_ARGUMENTS)
def test_a_width_list_of_the_wrong_length_raises_with_the_expected_length(name: str, argument: str) -> None:
    count = FAMILY[name][2]
    with pytest.raises(ValueError, match=f"{argument} .*expected {count}, got {count + 1}"):
        build(name, **{argument: [4] * (count + 1)})


@pytest.mark.parametrize("conv_channels", [0, CONV_PATH + 1, [2, 0, 3, 4]])
def test_conv_channels_out_of_range_raise(conv_channels: int | list[int]) -> None:
    with pytest.raises(ValueError, match="conv_channels"):
        build("tiny_shared", conv_channels=conv_channels)


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", FAMILY)
def test_an_equal_list_is_the_int_model_with_the_same_state_and_outputs(name: str) -> None:
    count = FAMILY[name][2]
    as_int = {"ffn_dim": 24} | ({"conv_channels": CONV_PATH} if name.startswith("tiny") else {})
    as_list = {key: [value] * count for key, value in as_int.items()}
    reference, listed = build(name, **as_int), build(name, **as_list)
    assert state_shapes(listed) == state_shapes(reference)
    assert listed.init_args["ffn_dim"] == [24] * count
    for parameter in listed.parameters():  # non-trivial weights everywhere (norm scales too)
        parameter.data.normal_(0.0, 0.3)
    reference.load_state_dict(listed.state_dict())
    with torch.no_grad():
        assert torch.equal(listed(mixture()), reference(mixture()))


def test_tiny_conv_channels_none_is_the_full_conv_path() -> None:
    assert state_shapes(build("tiny_shared")) == state_shapes(build("tiny_shared", conv_channels=CONV_PATH))
    assert build("tiny_shared").init_args["conv_channels"] is None


def test_a_pruned_conv_path_computes_the_full_one_with_the_dropped_channels_zeroed() -> None:
    torch.manual_seed(0)
    full = ConvAttentionLayer(DIM, 8, 2, 3, 24, 0.0).eval()
    for parameter in full.parameters():
        parameter.data.normal_()
    kept = 5
    full.depthwise.weight.data[kept:] = 0.0
    full.depthwise.bias.data[kept:] = 0.0
    pruned = ConvAttentionLayer(DIM, 8, 2, 3, 24, 0.0, conv_channels=kept).eval()
    state = full.state_dict()
    for key in ("depthwise.weight", "depthwise.bias"):
        state[key] = state[key][:kept]
    state["pointwise.weight"] = state["pointwise.weight"][:, :kept]
    pruned.load_state_dict(state)
    x = torch.randn(3, 11, DIM)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x))


QUARTZNET_BLOCKS = [
    [24, 11, 1, 2, 1, False],
    {"channels": 20, "kernel_size": 7, "repeat": 2},
    [28, 5, 1],
    [36, 1, 1, 1, 1, False, False],
]


def test_quartznet_irregular_block_channels_reach_every_block_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = QuartzNet(16, 29, QUARTZNET_BLOCKS).eval()
    channels = [24, 20, 28, 36]
    inputs = [16, *channels[:-1]]
    for block, width, in_width in zip(model.blocks, channels, inputs, strict=True):
        first, last = block.layers[0], block.layers[-1]
        last_conv = last.pointwise if last.pointwise is not None else last.conv
        assert first.temporal_conv.in_channels == in_width and last_conv.out_channels == width
        assert last.norm.weight.shape == (width,)
        if block.residual is not None:
            assert block.residual.conv.weight.shape == (width, in_width, 1)
    assert model.head.in_channels == 36
    features, lengths = torch.randn(2, 16, 40), torch.tensor([40, 25])
    with torch.no_grad():
        log_probs, out_lengths = model(features, lengths)
    assert log_probs.shape == (2, 20, 29) and out_lengths.tolist() == [20, 13]
    assert_round_trips(model, tmp_path, lambda m: m(features, lengths))


def test_quartznet_block_spec_with_too_many_fields_raises() -> None:
    with pytest.raises(ValueError, match="at most 8 fields"):
        QuartzNet(16, 29, [[24, 11, 1, 1, 1, False, True, 0.0, "extra"]])
