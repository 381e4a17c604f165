"""RE-SepFormer: paper size, shapes, norms, chunk-level causality, batch invariance."""

from __future__ import annotations

import pytest
import torch

from audiosep.models.resepformer import RESepFormer, resepformer_base
from audiosep.nn.norms import NORM_NAMES, is_causal_norm

KERNEL, CHUNK = 8, 6
TINY = dict(
    encoder_channels=12, kernel_size=KERNEL, num_blocks=3, num_intra_layers=1, num_inter_layers=1,
    num_heads=2, ffn_dim=24, chunk_size=CHUNK,
)  # fmt: skip


def tiny(**overrides: object) -> RESepFormer:
    torch.manual_seed(0)
    return RESepFormer(**(TINY | overrides)).eval()


def test_base_preset_has_the_paper_parameter_count() -> None:
    count = sum(p.numel() for p in resepformer_base().parameters())
    assert abs(count - 8.0e6) / 8.0e6 < 0.01
    assert sum(p.numel() for p in resepformer_base(causal=True).parameters()) == count


@pytest.mark.parametrize("length", [1, 9, 100, 333])
def test_output_has_the_input_length_and_one_channel_per_source(length: int) -> None:
    with torch.no_grad():
        assert tiny(num_sources=3)(torch.randn(2, length)).shape == (2, 3, length)


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_every_norm_builds_and_trains_or_is_refused_when_not_causal(norm: str, causal: bool) -> None:
    if causal and not is_causal_norm(norm):
        with pytest.raises(ValueError, match="not causal"):
            tiny(norm=norm, causal=causal)
        return
    model = tiny(norm=norm, causal=causal).train()
    estimate = model(torch.randn(2, 300))
    estimate.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def first_changed_sample(model: RESepFormer, mixture: torch.Tensor, start: int) -> int:
    """Index of the first output sample that moves when the input changes from ``start`` on."""
    changed = mixture.clone()
    changed[:, start:] = torch.randn_like(changed[:, start:])
    with torch.no_grad():
        diff = (model(mixture) - model(changed)).abs().amax(dim=(0, 1))
    return int(torch.nonzero(diff > 1e-6)[0])


def test_causal_model_looks_ahead_at_most_to_the_end_of_the_chunk() -> None:
    stride, start = KERNEL // 2, 201
    # The first encoder frame that sees sample `start`, and the chunk holding it.
    first_frame = (start - KERNEL) // stride + 1
    chunk_start_sample = (first_frame // CHUNK) * CHUNK * stride
    mixture = torch.randn(1, 400)
    assert first_changed_sample(tiny(causal=True, norm="channel_ln"), mixture, start) >= chunk_start_sample
    # The same test catches a non-causal model.
    assert first_changed_sample(tiny(), mixture, start) < chunk_start_sample


def test_batching_never_changes_an_utterance() -> None:
    model, mixtures = tiny(), torch.randn(3, 500)
    with torch.no_grad():
        batched = model(mixtures)
        single = torch.cat([model(mixtures[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_inference_in_slices_equals_one_pass() -> None:
    model, mixture = tiny(), torch.randn(2, 9000)  # 2 x 2250 frames: above the 4096-row slice
    with torch.no_grad():
        sliced = model(mixture)
    with torch.enable_grad():
        whole = model(mixture).detach()
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)


def test_invalid_configuration_raises() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        tiny(num_blocks=0)
    with pytest.raises(ValueError, match="global_ln.*not causal"):
        tiny(causal=True, norm="global_ln")
