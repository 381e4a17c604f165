"""SepFormer and the shared dual-path machinery: paper size, shapes, norms, layers vs references."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.checkpoint import load_model, save_model
from audiosep.models.sepformer import SepFormer, sepformer_base
from audiosep.nn.attention import MultiHeadSelfAttention, TransformerLayer
from audiosep.nn.dual_path import (
    non_overlapping_chunks,
    overlap_add,
    overlap_right_padding,
    overlapping_chunks,
    sinusoidal_encoding,
)
from audiosep.nn.norms import NORM_NAMES

TINY = dict(
    encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=2, num_intra_layers=1,
    num_inter_layers=1, num_heads=2, ffn_dim=24, chunk_size=10,
)  # fmt: skip


def tiny(**overrides: object) -> SepFormer:
    torch.manual_seed(0)
    return SepFormer(**(TINY | overrides)).eval()


def test_base_preset_has_the_paper_parameter_count() -> None:
    count = sum(p.numel() for p in sepformer_base().parameters())
    assert abs(count - 25.7e6) / 25.7e6 < 0.01


@pytest.mark.parametrize("length", [1, 7, 8, 333, 1001])
def test_output_has_the_input_length_and_one_channel_per_source(length: int) -> None:
    with torch.no_grad():
        assert tiny(num_sources=3)(torch.randn(2, length)).shape == (2, 3, length)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_builds_trains_and_separates(norm: str) -> None:
    if norm == "cumulative_ln":  # refused: not causal on overlapping chunks laid out chunk by chunk
        with pytest.raises(ValueError, match="cumulative_ln"):
            tiny(norm=norm)
        return
    model = tiny(norm=norm).train()
    estimate = model(torch.randn(2, 400))
    estimate.square().mean().backward()
    assert torch.isfinite(estimate).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_batching_never_changes_an_utterance() -> None:
    model, mixtures = tiny(), torch.randn(3, 500)
    with torch.no_grad():
        batched = model(mixtures)
        single = torch.cat([model(mixtures[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_inference_in_slices_equals_one_pass() -> None:
    model, mixture = tiny(), torch.randn(1, 9000)  # 2 x 2250 frames: above the 4096-row slice
    with torch.no_grad():
        sliced = model(mixture)
    with torch.enable_grad():
        whole = model(mixture).detach()
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, mixture = tiny(norm="rms_norm"), torch.randn(1, 300)
    save_model(model, tmp_path / "m.ckpt", {"sample_rate": 8000})
    loaded, metadata = load_model(tmp_path / "m.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(mixture), model(mixture))
    assert metadata == {"sample_rate": 8000} and loaded.init_args["norm"] == "rms_norm"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"chunk_size": 9}, "even"), ({"num_heads": 5}, "multiple of num_heads"), ({"norm": "gln"}, "unknown norm"),
     ({"kernel_size": 7}, "kernel_size")],
)  # fmt: skip
def test_invalid_configuration_raises(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_input_must_be_batch_by_time() -> None:
    with pytest.raises(ValueError, match=r"\[batch, time\].*\(400,\)"):
        tiny()(torch.randn(400))


# Shared machinery ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 4, 5, 23, 40])
def test_overlapping_chunks_hold_the_padded_sequence_at_hop_k_over_2(length: int) -> None:
    chunk, hop = 10, 5
    x = torch.randn(2, length, 3)
    chunks = overlapping_chunks(x, chunk)
    padded = torch.cat(
        [torch.zeros(2, hop, 3), x, torch.zeros(2, hop + overlap_right_padding(length, chunk), 3)], 1
    )
    assert (length + overlap_right_padding(length, chunk) + hop) % chunk == 0  # SpeechBrain's rule
    for s in range(chunks.shape[1]):
        torch.testing.assert_close(chunks[:, s], padded[:, s * hop : s * hop + chunk], rtol=0, atol=0)
    assert (chunks.shape[1] - 1) * hop + chunk == padded.shape[1]


def test_overlap_add_of_chunks_counts_every_frame_twice() -> None:
    x = torch.randn(2, 37, 3)
    torch.testing.assert_close(overlap_add(overlapping_chunks(x, 8), 37), 2 * x)


def test_non_overlapping_chunks_pad_at_least_one_frame() -> None:
    x = torch.arange(12.0).view(1, 12, 1)
    chunks = non_overlapping_chunks(x, 4)  # 12 frames fit 3 chunks, yet 4 come out (SpeechBrain)
    assert chunks.shape == (1, 4, 4, 1)
    torch.testing.assert_close(chunks.flatten()[:12], x.flatten())
    assert chunks.flatten()[12:].abs().sum() == 0


def test_sinusoidal_encoding_matches_its_formula() -> None:
    length, dim = 7, 6
    expected = torch.zeros(length, dim, dtype=torch.float64)
    for t in range(length):
        for i in range(dim // 2):
            expected[t, 2 * i] = math.sin(t / 10000 ** (2 * i / dim))
            expected[t, 2 * i + 1] = math.cos(t / 10000 ** (2 * i / dim))
    torch.testing.assert_close(
        sinusoidal_encoding(length, dim, dtype=torch.float64), expected, rtol=1e-6, atol=1e-6
    )


def naive_attention(module: MultiHeadSelfAttention, x: Tensor, causal: bool) -> Tensor:
    """Multi-head attention written out in float64: softmax(q k^T / sqrt(d)) v per head."""
    x, heads = x.double(), module.num_heads
    q, k, v = F.linear(x, module.qkv.weight.double(), module.qkv.bias.double()).chunk(3, dim=-1)
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731 - [B, H, L, d]
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return F.linear(y, module.out.weight.double(), module.out.bias.double())


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_the_formula(causal: bool) -> None:
    torch.manual_seed(0)
    module, x = MultiHeadSelfAttention(8, 2, causal=causal), torch.randn(3, 9, 8)
    torch.testing.assert_close(module(x).double(), naive_attention(module, x, causal), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_transformer_layer_matches_torch_transformer_encoder_layer(pre_norm: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerLayer(8, 2, 16, pre_norm=pre_norm).eval()
    peer = nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, layer_norm_eps=1e-6, batch_first=True, norm_first=pre_norm
    )
    peer.eval()
    names = {"attention.qkv.weight": "self_attn.in_proj_weight", "attention.qkv.bias": "self_attn.in_proj_bias",
             "attention.out.weight": "self_attn.out_proj.weight", "attention.out.bias": "self_attn.out_proj.bias",
             "ffn.0.weight": "linear1.weight", "ffn.0.bias": "linear1.bias", "ffn.3.weight": "linear2.weight",
             "ffn.3.bias": "linear2.bias"}  # fmt: skip
    for param in ours.parameters():
        param.data.normal_()
    peer.load_state_dict({names.get(k, k): v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
