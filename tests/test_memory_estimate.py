"""A pass's memory is estimated before it runs: a model file too large for the machine is refused or its chunk
shortened, never run until the system kills it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn

import audiosep.bench.memory as memory
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.cost import activation_peak_bytes
from audiosep.inference import MIN_CHUNK_SECONDS, ChunkConfig, SeparationError, Separator
from audiosep.models.conv_tasnet import ConvTasNet

SAMPLE_RATE = 8000
WIDE = {"enc_num_filters": 512, "enc_kernel_size": 2, "bottleneck_channels": 8, "hidden_channels": 16,
        "skip_channels": 8, "num_layers": 1, "num_repeats": 1, "num_sources": 4}  # fmt: skip


class Widening(nn.Module):
    """``[B, T] -> [B, 2, T]`` through a ``[B, width, T]`` temporary that lives alongside a second one."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.num_sources, self.width = 2, width
        self.up = nn.Conv1d(1, width, 1, bias=False)
        self.down = nn.Conv1d(width, 2, 1, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        wide = self.up(mixture.unsqueeze(1))  # [B, W, T]
        doubled = wide * 2.0  # both alive here
        return self.down(doubled)


def test_the_estimate_is_the_largest_set_of_tensors_alive_at_once() -> None:
    # two [1, W, T] float32 temporaries alive at once (locals live until forward returns), then the
    # [1, 2, T] output beside them; the input is the caller's, not counted
    def expected(width: int, length: int) -> int:
        return (2 * width + 2) * length * 4

    assert activation_peak_bytes(Widening(64), torch.zeros(1, 1000)) == expected(64, 1000)
    assert activation_peak_bytes(Widening(128), torch.zeros(1, 1000)) == expected(128, 1000)
    assert activation_peak_bytes(Widening(64), torch.zeros(3, 4000)) == 3 * expected(64, 4000)


class Views(nn.Module):
    """A ``[B, 64, T]`` temporary seen through a view, a transpose and a split while it lives."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv1d(1, 64, 1, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        wide = self.up(mixture.unsqueeze(1))
        flat, swapped, halves = wide.view(-1), wide.transpose(1, 2), wide.split(32, dim=1)
        return (flat.sum() + swapped.sum() + halves[0].sum()).expand(2)


def test_views_share_their_storage_and_the_callers_grad_mode_changes_nothing() -> None:
    # one [1, 64, 1000] float32 temporary (256 000 bytes), whatever views of it live; the sums are 4 bytes each
    peak = activation_peak_bytes(Views(), torch.zeros(1, 1000))
    assert 64 * 1000 * 4 <= peak < 64 * 1000 * 4 + 100
    with torch.inference_mode():
        assert activation_peak_bytes(Views(), torch.zeros(1, 1000)) == peak


def test_the_estimate_copies_no_weights() -> None:
    model = nn.Sequential(nn.Linear(1, 25_000_000, bias=False), nn.Linear(25_000_000, 1, bias=False))  # 200 MB
    before = memory.start_peak_window()
    activation_peak_bytes(model, torch.zeros(1, 1))
    assert memory.peak_rss_mib() - before < 50


def test_another_chunk_batch_or_model_is_estimated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    separator = _separator(1e9, monkeypatch)
    one = separator.pass_memory_mib(1.0)
    separator.chunk_batch = 8
    assert separator.pass_memory_mib(1.0) == pytest.approx(8 * one)
    import audiosep.cost as cost

    estimated: list[nn.Module] = []
    real = cost.activation_peak_bytes
    monkeypatch.setattr(cost, "activation_peak_bytes", lambda model, *inputs: estimated.append(model) or real(model, *inputs))
    separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE))
    assert not estimated  # the model as it was: estimated once
    separator.model.masker.mask_act = nn.Tanh()  # the runtime, and its estimate, follow the model
    separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE))
    assert len(estimated) == 1 and isinstance(estimated[0].masker.mask_act, nn.Tanh)


def test_the_estimate_allocates_nothing_and_leaves_the_model_alone() -> None:
    model = ConvTasNet(**WIDE)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # 10 minutes at 8 kHz: about 10 GB of activations, estimated on the meta device
    assert activation_peak_bytes(model, torch.zeros(1, 600 * SAMPLE_RATE)) > 5e9
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_a_conv_tasnet_estimate_is_near_its_measured_peak() -> None:
    model = ConvTasNet(**WIDE).eval()
    mixture = 0.1 * torch.randn(1, 2 * SAMPLE_RATE)
    estimate = activation_peak_bytes(model, mixture) / 2**20
    with torch.inference_mode():
        model(mixture)
        before = memory.start_peak_window()
        model(mixture)
        measured = memory.peak_rss_mib() - before
    assert 0.5 * measured <= estimate <= 2.0 * measured, (estimate, measured)


def _separator(available_mib: float, monkeypatch: pytest.MonkeyPatch, chunk: ChunkConfig | None = None) -> Separator:
    monkeypatch.setattr(memory, "available_mib", lambda device: available_mib)
    return Separator(ConvTasNet(**WIDE), SAMPLE_RATE, chunk=chunk)


def test_a_chunk_too_large_for_the_memory_available_is_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    separator = _separator(1e9, monkeypatch)
    per_second = separator.pass_memory_mib(1.0)
    separator = _separator(8 * per_second, monkeypatch)  # a 16 s chunk needs 16 x; MEMORY_SHARE x 8 fit
    mixture = 0.1 * torch.randn(2 * SAMPLE_RATE)
    sources = separator.separate_at_model_rate(mixture)
    seconds = 8 * memory.MEMORY_SHARE
    assert separator.chunk.seconds == pytest.approx(seconds) and separator.chunk.overlap_seconds == pytest.approx(seconds / 4)
    assert sources.shape == (4, 2 * SAMPLE_RATE) and torch.isfinite(sources).all()


def test_a_chunk_that_fits_is_kept_and_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    separator = _separator(1e9, monkeypatch, ChunkConfig(2.0, 0.5))
    calls = []
    monkeypatch.setattr(memory, "available_mib", lambda device: calls.append(device) or 1e9)
    for _ in range(2):
        separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE))
    assert separator.chunk == ChunkConfig(2.0, 0.5) and len(calls) == 1
    separator.chunk = ChunkConfig(4.0, 0.5)  # another chunk: checked again
    separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE))
    assert len(calls) == 2


def test_a_model_that_fits_no_chunk_is_refused_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    separator = _separator(1.0, monkeypatch)  # 1 MiB
    ran = []
    separator.runtime.register_forward_pre_hook(lambda *args: ran.append(1))
    with pytest.raises(SeparationError, match=rf"MiB of memory for a pass over 16 s .*{MIN_CHUNK_SECONDS:g} s, the shortest"):
        separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE))
    assert not ran


def test_streaming_is_not_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_mib", lambda device: 1.0)
    causal = {**WIDE, "causal": True, "norm": "cumulative_ln"}
    separator = Separator(ConvTasNet(**causal), SAMPLE_RATE, stream_block_ms=20.0)
    assert separator.separate_at_model_rate(0.1 * torch.randn(SAMPLE_RATE)).shape == (4, SAMPLE_RATE)


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_the_cli_names_the_model_file_and_writes_nothing(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "wide.ckpt"
    save_model(ConvTasNet(**WIDE), ckpt, {"sample_rate": SAMPLE_RATE})
    wav = tmp_path / "mix.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE), SAMPLE_RATE)
    monkeypatch.setattr(memory, "available_mib", lambda device: 1.0)
    out = tmp_path / "out"
    if command == "infer":
        args = ["infer", "--ckpt", str(ckpt), "--out-dir", str(out), str(wav)]
    else:
        args = ["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "nowhere"), "--out-dir", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"audiosep: error: {ckpt}: the model needs about") and "MiB can be used" in err[0]
    assert not out.exists()


def test_a_long_depthwise_kernel_runs_in_the_memory_of_the_plain_model() -> None:
    """oneDNN's channels-last depthwise kernel held ~76 B x taps^2 of workspace: 2 GB for a 73 KB model file with a
    4097-tap kernel (reviewer); the prepared model runs such kernels channels-first, as the plain one does."""
    from audiosep.optimize import prepare_for_inference

    model = ConvTasNet(enc_num_filters=16, bottleneck_channels=4, hidden_channels=4, skip_channels=4, num_layers=1,
                       num_repeats=1, conv_kernel_size=2049).eval()  # fmt: skip
    prepared = prepare_for_inference(model)
    mixture = 0.1 * torch.randn(1, SAMPLE_RATE)
    with torch.inference_mode():
        expected = model(mixture)
        before = memory.start_peak_window()
        got = prepared(mixture)
        extra = memory.peak_rss_mib() - before
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert extra < 150, f"{extra:.0f} MiB for one pass (oneDNN's channels-last kernel: ~320 MiB)"


def test_bench_skips_a_case_that_would_not_fit_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiosep.bench.run import BenchSettings, run_bench

    monkeypatch.setattr(memory, "memory_room_mib", lambda device: 1.0)
    settings = BenchSettings(models=["conv_tasnet_demo"], overrides=WIDE, lengths=[0.25], backends=["eager"], repeats=1,
                             memory=False, progress=False)  # fmt: skip
    (record,) = run_bench(settings)["results"]
    assert record["status"].startswith("unsupported: a pass needs about") and "1 MiB can be used on cpu" in record["status"]
    assert record.get("latency_ms") is None


def test_export_refuses_a_model_whose_check_would_not_fit_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiosep.errors import UserError
    from audiosep.export import export_model

    monkeypatch.setattr(memory, "memory_room_mib", lambda device: 1.0)
    out = tmp_path / "wide.pt"
    with pytest.raises(UserError, match=r"wide\.pt: checking the export over \d+ samples: a pass needs about"):
        export_model(ConvTasNet(**WIDE), out, "torchscript", SAMPLE_RATE)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_memory_available_is_the_least_of_the_system_the_cgroup_and_ulimit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's /proc/meminfo shows the host's memory; its cgroup limit (or ulimit -v) ended the process without a
    message (reviewers)."""
    import resource

    files = {"/proc/meminfo": "MemTotal: 99999999 kB\nMemAvailable:   20971520 kB\n",  # 20 GiB
             "/proc/self/cgroup": "0::/job/42\n", "/sys/fs/cgroup/job/42/memory.max": f"{6 * 2**30}\n",
             "/sys/fs/cgroup/job/42/memory.current": f"{2**30}\n", "/proc/self/status": "VmSize:  1048576 kB\n"}  # fmt: skip
    monkeypatch.setattr(memory, "_read", files.get)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert memory.available_mib(torch.device("cpu")) == 5 * 1024  # the cgroup: 6 GiB less 1 GiB in use
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (4 * 2**30, resource.RLIM_INFINITY))
    assert memory.available_mib(torch.device("cpu")) == 3 * 1024  # ulimit -v: 4 GiB less a 1 GiB address space
    files["/sys/fs/cgroup/job/42/memory.max"] = "max\n"  # no cgroup limit, no ulimit: the system's
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert memory.available_mib(torch.device("cpu")) == 20 * 1024
    assert memory.memory_room_mib(torch.device("cpu")) == memory.MEMORY_SHARE * 20 * 1024
