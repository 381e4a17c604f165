"""What a benchmark measures: our models (presets with overrides, checkpoints) and peers' models.

A :class:`ModelSpec` holds only plain values, so that a fresh worker process (the peak-memory
measurement) can rebuild exactly the model the parent measures. Peers are the same architecture
from another toolkit: torchaudio's ``ConvTasNet`` built with our Conv-TasNet's sizes, SpeechBrain's
SepFormer and RE-SepFormer in their published configurations (ours must then be that preset).
Every model is called as ours are: ``[B, T]`` mixture -> ``[B, S, T]`` (QuartzNet: log-mel
features ``[B, F, T]`` and lengths ``[B]``).
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

SEPARATOR_RATE = 8000  # presets of separators are the 8 kHz LibriMix / WSJ0-2mix configurations
ASR_RATE = 16000
FEATURE_FRAMES_PER_SECOND = 100  # QuartzNet's log-mel hop: 10 ms
SPEECH_LEVEL = 0.1  # standard deviation of the random test signal
BUILD_SEED = 0  # seed of the untrained presets and peers (the same weights in every run)
# Weights a preset with overrides may hold (2 GB in float32; sepformer_base holds 26 M): hidden_channels=1e9
# asked for 256 GB, a traceback (reviewer). Checked on a meta-device build, which allocates nothing.
MAX_PRESET_VALUES = 500_000_000
PEER_PACKAGES = {"torchaudio-conv-tasnet": "torchaudio", "speechbrain-sepformer": "speechbrain",
                 "speechbrain-resepformer": "speechbrain"}  # fmt: skip
PEER_LABELS = {"torchaudio-conv-tasnet": "torchaudio ConvTasNet", "speechbrain-sepformer": "SpeechBrain SepFormer",
               "speechbrain-resepformer": "SpeechBrain RE-SepFormer"}  # fmt: skip


@dataclass
class ModelSpec:
    """How to build one benchmarked model, in this process or a worker.

    Args:
        label: the name in tables and records.
        kind: ``preset`` (registry name), ``checkpoint`` (model file path) or ``peer``.
        name: preset name, checkpoint path, or peer name (a key of :data:`PEER_PACKAGES`).
        overrides: constructor overrides of a preset, or the configuration of a peer.
        peer_of: labels of our models this peer is compared with (peers only).
        sample_rate: a peer's input rate: that of the models it is compared with (a 16 kHz model
            against a peer fed 8 kHz would be timed on twice the samples).
    """

    label: str
    kind: Literal["preset", "checkpoint", "peer"]
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    peer_of: list[str] = field(default_factory=list)
    sample_rate: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A built model (plain, eval mode, fp32, CPU) with what inputs it takes."""

    spec: ModelSpec
    module: nn.Module
    sample_rate: int
    is_asr: bool

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def importable(package: str) -> bool:
    """Whether ``package`` can be imported (``sys.modules[package] = None`` counts as not)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ValueError, ImportError):
        return False


def check_preset_size(name: str, overrides: dict[str, Any]) -> None:
    """Refuse a preset whose overrides make it hold more than :data:`MAX_PRESET_VALUES` weights (built on the
    meta device first: nothing allocated). Raises ``ValueError``, or what the constructor raises."""
    from audiosep.models import build

    with torch.device("meta"):
        meta = build(name, **overrides)
    values = sum(t.numel() for t in (*meta.parameters(), *meta.buffers()))
    if values > MAX_PRESET_VALUES:
        raise ValueError(f"these overrides make a model of {values:,} weights; at most {MAX_PRESET_VALUES:,} "
                         "are benchmarked")  # fmt: skip


def load(spec: ModelSpec) -> LoadedModel:
    """Build ``spec`` (raises ``ValueError``/``TypeError`` for a bad preset, override or file)."""
    from audiosep.models import QuartzNet, build

    sample_rate = spec.sample_rate
    if spec.kind == "checkpoint":
        from audiosep.checkpoint import load_model

        module, metadata = load_model(spec.name)
        sample_rate = metadata.get("sample_rate")
    else:
        # Untrained weights drawn from a fixed seed: every run benchmarks the same model (the int8
        # rows' SI-SNR moved by 2 dB between runs with fresh random weights). Models are built on the
        # CPU, so only the CPU generator is seeded (and restored): the caller's RNGs are untouched.
        if spec.kind == "preset":
            check_preset_size(spec.name, spec.overrides)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(BUILD_SEED)
            module = build(spec.name, **spec.overrides) if spec.kind == "preset" else build_peer(spec.name, spec.overrides)
    is_asr = isinstance(module, QuartzNet)
    rate = int(sample_rate or (ASR_RATE if is_asr else SEPARATOR_RATE))
    return LoadedModel(spec, module.eval(), rate, is_asr)


def example_inputs(model: LoadedModel, batch: int, seconds: float, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> tuple[Tensor, ...]:  # fmt: skip
    """Seeded inputs of ``batch`` x ``seconds``: a speech-level mixture, or features and lengths."""
    generator = torch.Generator().manual_seed(0)
    if model.is_asr:
        frames = max(1, round(seconds * FEATURE_FRAMES_PER_SECOND))
        features = torch.randn(batch, model.module.in_features, frames, generator=generator)
        lengths = torch.full((batch,), frames, dtype=torch.long)
        return features.to(device, dtype), lengths.to(device)
    mixture = SPEECH_LEVEL * torch.randn(
        batch, max(1, round(seconds * model.sample_rate)), generator=generator
    )
    return (mixture.to(device, dtype),)


def audio_seconds(inputs: tuple[Tensor, ...], model: LoadedModel) -> float:
    """Seconds of one item of ``inputs`` (for per-second figures)."""
    if model.is_asr:
        return inputs[0].shape[-1] / FEATURE_FRAMES_PER_SECOND
    return inputs[0].shape[-1] / model.sample_rate


# --- peers ---------------------------------------------------------------------------------------


class _TorchaudioConvTasNet(nn.Module):
    """torchaudio's ConvTasNet called as ours: ``[B, T] -> [B, S, T]`` (it takes ``[B, 1, T]``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        import torchaudio

        self.model = torchaudio.models.ConvTasNet(**config)

    def forward(self, mixture: Tensor) -> Tensor:
        return self.model(mixture.unsqueeze(1))  # [B, 1, T] -> [B, S, T]


def _reset_once(self: nn.Module, layer: nn.Module) -> None:
    for module in layer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


class _SpeechBrainSepFormer(nn.Module):
    """SpeechBrain's ``SepformerWrapper`` (its LibriMix recipe's sizes): ``[B, T] -> [B, S, T]``."""

    def __init__(self) -> None:
        super().__init__()
        from unittest import mock

        from speechbrain.lobes.models.dual_path import SepformerWrapper

        # Its reset_layer_recursively visits every descendant once per ancestor (24,624 resets, 40 s
        # on one core); one reset per module gives the same initialisation distribution.
        with mock.patch.object(SepformerWrapper, "reset_layer_recursively", _reset_once):
            self.model = SepformerWrapper()

    def forward(self, mixture: Tensor) -> Tensor:
        return self.model(mixture).transpose(1, 2)  # [B, T, S] -> [B, S, T]


class _SpeechBrainRESepFormer(nn.Module):
    """SpeechBrain's RE-SepFormer as in its WSJ0-Mix recipe, recipe-style forward: ``[B, T] -> [B, S, T]``."""

    def __init__(self) -> None:
        super().__init__()
        from speechbrain.lobes.models.dual_path import Decoder, Encoder
        from speechbrain.lobes.models.resepformer import (
            ResourceEfficientSeparator,
            SBTransformerBlock_wnormandskip,
        )

        blocks = [
            SBTransformerBlock_wnormandskip(8, 128, 8, d_ffn=1024, dropout=0.0, use_positional_encoding=True,
                                            norm_before=True)
            for _ in range(2)
        ]  # fmt: skip
        self.encoder = Encoder(kernel_size=16, out_channels=128)
        self.masknet = ResourceEfficientSeparator(
            128, causal=False, num_spk=2, layer=2, unit=128, segment_size=150, mem_type="av",
            seg_model=blocks[0], mem_model=blocks[1],
        )  # fmt: skip
        self.decoder = Decoder(in_channels=128, out_channels=1, kernel_size=16, stride=8, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        features = self.encoder(mixture)  # [B, N, M]
        sources = [self.decoder(features * mask) for mask in self.masknet(features)]  # S x [B, T']
        estimates = torch.stack(sources, dim=1)
        length = mixture.shape[-1]  # SpeechBrain's recipe pads or trims the decoder output to T
        if estimates.shape[-1] < length:
            estimates = nn.functional.pad(estimates, (0, length - estimates.shape[-1]))
        return estimates[..., :length]


def build_peer(name: str, config: dict[str, Any]) -> nn.Module:
    """The peer ``name`` (a key of :data:`PEER_PACKAGES`) in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "torchaudio-conv-tasnet":
            return _TorchaudioConvTasNet(config).eval()
        if name == "speechbrain-sepformer":
            return _SpeechBrainSepFormer().eval()
        if name == "speechbrain-resepformer":
            return _SpeechBrainRESepFormer().eval()
    raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEER_PACKAGES)}")


def _torchaudio_config(args: dict[str, Any]) -> dict[str, Any] | str:
    """torchaudio ``ConvTasNet`` arguments for our Conv-TasNet ``init_args``, or why there are none."""
    from audiosep.nn.norms import NORM_ALIASES

    if not isinstance(args["hidden_channels"], int):
        return "torchaudio's ConvTasNet has one hidden width for all blocks (this model has per-block widths)"
    if args["skip_channels"] != args["bottleneck_channels"]:
        return "torchaudio's ConvTasNet has skip channels = bottleneck channels"
    if args["causal"] or NORM_ALIASES.get(args["norm"], args["norm"]) != "global_ln":
        return "torchaudio's ConvTasNet is non-causal with gLN only"
    if args["mask_activation"] not in ("sigmoid", "relu"):
        return "torchaudio's ConvTasNet has sigmoid or relu masks only"
    return {
        "num_sources": args["num_sources"], "enc_kernel_size": args["enc_kernel_size"],
        "enc_num_feats": args["enc_num_filters"], "msk_kernel_size": args["conv_kernel_size"],
        "msk_num_feats": args["bottleneck_channels"], "msk_num_hidden_feats": args["hidden_channels"],
        "msk_num_layers": args["num_layers"], "msk_num_stacks": args["num_repeats"],
        "msk_activate": args["mask_activation"],
    }  # fmt: skip


def _same_as_preset(module: nn.Module, preset: str) -> bool:
    """Whether ``module`` has the init args of ``preset`` (built on the meta device: no weights)."""
    from audiosep.models import build

    with torch.device("meta"):
        reference = build(preset)
    return getattr(module, "init_args", None) == reference.init_args


def peer_spec(model: LoadedModel) -> ModelSpec | str:
    """The peer of ``model`` (same architecture, another toolkit), or a one-line reason for none."""
    from audiosep.models import ConvTasNet, RESepFormer, SepFormer

    module = model.module
    if isinstance(module, ConvTasNet):
        name, config = "torchaudio-conv-tasnet", _torchaudio_config(module.init_args)
    elif isinstance(module, SepFormer):
        name, config = (
            "speechbrain-sepformer",
            {}
            if _same_as_preset(module, "sepformer_base")
            else ("SpeechBrain's SepFormer is measured in its published configuration (sepformer_base) only"),
        )
    elif isinstance(module, RESepFormer):
        name, config = (
            "speechbrain-resepformer",
            {}
            if _same_as_preset(module, "resepformer_base")
            else (
                "SpeechBrain's RE-SepFormer is measured in its published configuration (resepformer_base) only"
            ),
        )
    else:
        return f"no peer implementation of {type(module).__name__} is benchmarked"
    if isinstance(config, str):
        return config
    if not importable(PEER_PACKAGES[name]):
        return f"{PEER_PACKAGES[name]} is not importable"
    return ModelSpec(PEER_LABELS[name], "peer", name, config, sample_rate=model.sample_rate)
