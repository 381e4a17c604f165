"""Gates, channel removal and the MACs budget on tiny models of every separator family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from audiosep.checkpoint import load_model, save_model
from audiosep.models import ConvTasNet, RESepFormer, SepFormer, TinySepformer, build
from audiosep.nn.norms import NORM_NAMES
from audiosep.pruning.gates import ChannelGates
from audiosep.pruning.groups import find_groups, total_macs
from audiosep.pruning.latency import measure_latency_spread
from audiosep.pruning.surgery import (
    l1_scores,
    pruned_macs,
    random_scores,
    remove_channels,
    select_by_score,
    select_uniform,
)

RATE = 8000
TRANSFORMER = dict(num_blocks=2, num_intra_layers=1, num_inter_layers=1, num_heads=2, ffn_dim=24)


def conv_tasnet(norm: str = "BN") -> ConvTasNet:
    return ConvTasNet(
        enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=24,
        skip_channels=8, num_layers=2, num_repeats=2, norm=norm,
    )  # fmt: skip


MODELS = {
    "conv_tasnet_bn": lambda: conv_tasnet("BN"),
    "conv_tasnet_dyt": lambda: conv_tasnet("dyt"),
    "sepformer": lambda: SepFormer(encoder_channels=16, model_channels=16, chunk_size=10, **TRANSFORMER),
    "resepformer": lambda: RESepFormer(encoder_channels=16, chunk_size=10, **TRANSFORMER),
    "tiny_sepformer": lambda: TinySepformer(
        encoder_channels=16, model_channels=16, attention_channels=8, chunk_size=10, **TRANSFORMER
    ),
}


def _prepared(name: str) -> nn.Module:
    """Random norm parameters and BatchNorm statistics, eval mode."""
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "norm" in key:
                param.add_(0.3 * torch.randn_like(param))
    model.train()(0.1 * torch.randn(4, 800))
    return model.eval()


def _mixture() -> torch.Tensor:
    return 0.1 * torch.randn(2, 811, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", MODELS)
def test_all_open_gates_change_nothing(name: str) -> None:
    model = _prepared(name)
    x = _mixture()
    expected = model(x)
    gates = ChannelGates(find_groups(model, RATE))
    gates.attach(model)
    assert torch.equal(model(x), expected)
    gates.detach()


def _close_some(gates: ChannelGates, seed: int = 1) -> None:
    """Close about 40 % of every group's channels, never all."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in gates.groups:
            closed = torch.rand(group.size, generator=generator) < 0.4
            closed[0] = False
            gates.score(group)[closed] = -5.0


def _gated_and_pruned(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """The model with some gates closed, and the model with those channels removed, on ``x``."""
    groups = find_groups(model, RATE)
    gates = ChannelGates(groups)
    _close_some(gates)
    gates.attach(model)
    with torch.no_grad():
        gated = model(x)
    gates.detach()
    pruned = remove_channels(model, groups, gates.open_channels())
    with torch.no_grad():
        return gated, pruned(x), pruned


@pytest.mark.parametrize("name", MODELS)
def test_removing_closed_channels_equals_the_gated_model(name: str) -> None:
    """Channels whose gate is zero are removed with their biases, norm parameters and statistics."""
    model = _prepared(name)
    gated, pruned_out, pruned = _gated_and_pruned(model, _mixture())
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(pruned_out, gated, rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_removal_is_exact_for_every_norm(norm: str) -> None:
    """Norms pooling over channels (gLN, cLN, channel LN, RMSNorm) take their gated statistics over the
    open channels only, and ELN's width-dependent scale is absorbed: removal equals the gated model."""
    torch.manual_seed(0)
    model = conv_tasnet(norm)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "norm" in key:
                param.add_(0.3 * torch.randn_like(param))
    model.train()(0.1 * torch.randn(4, 800))  # running statistics of BN, UN, PowerNorm
    model.eval()
    gated, pruned_out, _ = _gated_and_pruned(model, _mixture())
    torch.testing.assert_close(pruned_out, gated, rtol=0, atol=1e-5)


def test_gated_statistics_ignore_the_closed_channels() -> None:
    """A gate at the gate point alone leaves gLN's statistics over every channel: far from the pruned model."""
    model = conv_tasnet("gLN").eval()
    groups = find_groups(model, RATE)
    gates = ChannelGates(groups)
    _close_some(gates)
    for group in groups:
        model.get_submodule(group.gate_point).register_forward_pre_hook(gates._hook(group))
    with torch.no_grad():
        naive = model(_mixture())
        pruned = remove_channels(model, groups, gates.open_channels())(_mixture())
    assert (pruned - naive).abs().max() > 1e-4


def test_open_channel_gradient_reaches_the_scores_through_the_statistics() -> None:
    """All gates open: the output is the model's own, bit for bit, and the scores' gradient includes what
    closing a channel does to the statistics (it differs from a gate at the gate point alone)."""
    model = conv_tasnet("gLN").eval().requires_grad_(False)
    groups = find_groups(model, RATE)
    x = _mixture()
    expected = model(x)

    def score_gradients(attach) -> list[torch.Tensor]:
        gates = ChannelGates(groups)
        handles = attach(gates)
        out = model(x)
        for handle in handles:
            handle.remove()
        gates.detach()
        assert torch.equal(out, expected)
        out.square().sum().backward()
        return [gates.score(g).grad for g in groups]

    def full(gates: ChannelGates) -> list:
        gates.attach(model)
        return []

    def gate_points_only(gates: ChannelGates) -> list:
        return [model.get_submodule(g.gate_point).register_forward_pre_hook(gates._hook(g)) for g in groups]

    with_statistics, without = score_gradients(full), score_gradients(gate_points_only)
    assert all(g.abs().sum() > 0 for g in with_statistics)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(with_statistics, without, strict=True))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cut", [0.5, 0.3])
@pytest.mark.parametrize("select", [select_by_score, select_uniform])
def test_budget_is_met_within_two_percent(name: str, cut: float, select) -> None:
    """Targets that remove ``cut`` of the prunable MACs (tiny models have large fixed costs)."""
    model = MODELS[name]().eval()
    groups = find_groups(model, RATE)
    total = total_macs(model, RATE)
    prunable = sum(g.macs_per_channel * g.size for g in groups) / total
    target = 1 - cut * prunable
    keep = select(groups, random_scores(groups, 0), total, target)
    pruned = remove_channels(model, groups, keep)
    counted = total_macs(pruned, RATE)
    assert counted == pytest.approx(pruned_macs(groups, keep, total), rel=1e-6)  # cost model = counter
    assert abs(counted / total - target) <= 0.02


def test_channel_costs_match_the_flop_counter() -> None:
    """Removing every other channel lowers the counted MACs by exactly the predicted amount."""
    model = conv_tasnet("BN").eval()
    groups = find_groups(model, RATE)
    total = total_macs(model, RATE)
    keep = {g.name: torch.arange(0, g.size, 2) for g in groups}
    assert total_macs(remove_channels(model, groups, keep), RATE) == pytest.approx(
        pruned_macs(groups, keep, total), rel=1e-9
    )


def test_select_by_score_keeps_the_highest_scores_across_groups() -> None:
    model = conv_tasnet("BN").eval()
    groups = find_groups(model, RATE)
    scores = {g.name: torch.full((g.size,), -1.0) for g in groups}
    scores[groups[0].name][:] = 10.0  # one group is all important
    keep = select_by_score(groups, scores, total_macs(model, RATE), 0.6)
    assert len(keep[groups[0].name]) == groups[0].size
    assert min(len(keep[g.name]) for g in groups) >= 1


def test_widths_rounded_to_a_multiple() -> None:
    model = conv_tasnet("BN").eval()
    groups = find_groups(model, RATE)
    keep = select_by_score(groups, random_scores(groups, 2), total_macs(model, RATE), 0.6, multiple=8)
    assert all(len(v) % 8 == 0 and len(v) >= 8 for v in keep.values())


@pytest.mark.parametrize("multiple", [8, 16])
def test_rounded_widths_stay_within_the_budget_and_keep_the_best_channels(multiple: int) -> None:
    """The demo Conv-TasNet at 50 %: widths are multiples, the MACs at most the target and within 2 %."""
    model = build("conv_tasnet_demo").eval()
    groups = find_groups(model, RATE)
    total = total_macs(model, RATE)
    scores = random_scores(groups, 4)
    keep = select_by_score(groups, scores, total, 0.5, multiple=multiple)
    assert all(len(v) % multiple == 0 for v in keep.values())
    fraction = pruned_macs(groups, keep, total) / total
    assert 0.48 <= fraction <= 0.5
    for g in groups:  # a group keeps its best-scored channels
        kept = scores[g.name][keep[g.name]]
        dropped = scores[g.name][[i for i in range(g.size) if i not in set(keep[g.name].tolist())]]
        assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_l1_scores_rank_a_zeroed_channel_last() -> None:
    model = conv_tasnet("BN").eval()
    groups = find_groups(model, RATE)
    with torch.no_grad():
        model.masker.blocks[0].in_conv.weight[5] = 0
        model.masker.blocks[0].out_conv.weight[:, 5] = 0
        model.masker.blocks[0].depthwise.weight[5] = 0
    scores = l1_scores(model, groups)
    assert int(scores[groups[0].name].argmin()) == 5


@pytest.mark.parametrize("name", MODELS)
def test_pruned_checkpoint_round_trips(name: str, tmp_path: Path) -> None:
    model = _prepared(name)
    groups = find_groups(model, RATE)
    keep = select_uniform(groups, l1_scores(model, groups), total_macs(model, RATE), 0.8)
    pruned = remove_channels(model, groups, keep).eval()
    save_model(pruned, tmp_path / "pruned.pt", {"sample_rate": RATE})
    loaded, _ = load_model(tmp_path / "pruned.pt")
    assert loaded.init_args == pruned.init_args
    x = _mixture()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
        assert loaded(x).shape == model(x).shape


def test_latency_is_measured_for_every_model_in_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models timed (ordered, finite, positive spreads), in a child process: this one's models never run."""
    model = conv_tasnet("BN").eval()
    groups = find_groups(model, RATE)
    pruned = remove_channels(model, groups, {g.name: torch.arange(0, g.size, 2) for g in groups}).eval()
    calls = []
    monkeypatch.setattr(ConvTasNet, "forward", lambda self, x: calls.append(x))  # only this process sees it
    latency = measure_latency_spread({"before": model, "after": pruned}, 0.1, RATE, repeats=3)
    assert set(latency) == {"before", "after"}
    for timing in latency.values():
        assert 0 < timing["min"] <= timing["q1"] <= timing["median"] <= timing["q3"] <= timing["max"] < 10
    assert calls == []


def test_a_fully_closed_group_stays_finite_during_the_search() -> None:
    """Every channel of a block closed: the open-channel statistics have no channel, yet nothing is NaN."""
    model = conv_tasnet("gLN").eval()
    groups = find_groups(model, RATE)
    gates = ChannelGates(groups)
    with torch.no_grad():
        gates.score(groups[0]).fill_(-5.0)
    gates.attach(model)
    out = model(_mixture())
    gates.detach()
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(gates.score(g).grad).all() for g in groups)
