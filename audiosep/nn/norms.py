"""Normalization registry: one name -> one layer over ``[B, C, T]`` (or ``[B, C, *]``) inputs.

Why a registry: the literature reuses names for different things. The Conv-TasNet paper's
``cLN`` is *cumulative* layer norm (statistics over channels and all past frames), while
SpeechBrain and Asteroid call the per-frame channel LayerNorm ``cLN``. Here every norm has an
unambiguous name; the paper aliases keep the paper's meaning:

==================  ==========================================================  =======
name                statistics                                                  causal
==================  ==========================================================  =======
``global_ln``       mean/var over channels and time, per utterance (``gLN``)    no
``cumulative_ln``   mean/var over channels and frames ``<= t`` (paper ``cLN``)  yes
``channel_ln``      mean/var over channels per frame (SpeechBrain/Asteroid      yes
                    "cLN"; transformer LayerNorm, alias ``layer_norm``)
``time_ln``         mean/var over time per channel (LayerNorm over time)        no
``batch_norm``      BatchNorm over batch and time (eval: per-channel affine)    yes
``rms_norm``        root-mean-square over channels per frame, no centring       yes
``dyt``             no statistics: ``tanh(alpha * x) * weight + bias`` (DyT)    yes
``none``            identity                                                    yes
==================  ==========================================================  =======

Aliases: ``gLN`` -> ``global_ln``, ``cLN`` -> ``cumulative_ln`` (paper meaning), ``layer_norm``/``LN``
-> ``channel_ln``, ``BN`` -> ``batch_norm``.
Every layer has per-channel ``weight`` and ``bias`` of shape ``[C]`` (none has neither) and a
``causal`` attribute.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CanonicalNormName = Literal[
    "global_ln", "cumulative_ln", "channel_ln", "time_ln", "batch_norm", "rms_norm", "dyt", "none"
]
# What a ``norm:`` argument accepts: canonical names and paper aliases. Typed as a Literal so that
# LightningCLI lists the choices in ``--help`` and rejects a typo at parse time.
NormName = Literal[
    "global_ln", "cumulative_ln", "channel_ln", "time_ln", "batch_norm", "rms_norm", "dyt", "none",
    "gLN", "cLN", "layer_norm", "LN", "BN",
]  # fmt: skip
NORM_NAMES: tuple[str, ...] = get_args(CanonicalNormName)
NORM_ALIASES: dict[str, str] = {
    "gLN": "global_ln",
    "cLN": "cumulative_ln",
    "layer_norm": "channel_ln",
    "LN": "channel_ln",
    "BN": "batch_norm",
}
CAUSAL_NORMS: frozenset[str] = frozenset(
    {"cumulative_ln", "channel_ln", "batch_norm", "rms_norm", "dyt", "none"}
)


def canonical_norm_name(name: str) -> CanonicalNormName:
    """Map a name or paper alias to its canonical registry name; unknown names raise."""
    canonical = NORM_ALIASES.get(name, name)
    if canonical not in NORM_NAMES:
        valid = ", ".join(NORM_NAMES + tuple(NORM_ALIASES))
        raise ValueError(f"unknown norm {name!r}; valid names: {valid}")
    return canonical


def is_causal_norm(name: str) -> bool:
    """True when the norm's output at frame t never depends on frames after t."""
    return canonical_norm_name(name) in CAUSAL_NORMS


class _AffineNorm(nn.Module):
    """Base: per-channel ``weight``/``bias`` applied along dim 1 of ``[B, C, *]``."""

    causal = True

    def __init__(self, num_channels: int, eps: float) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def _affine(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def normalize(self, x: Tensor) -> Tensor:
        """The norm without its per-channel affine (what remains once the affine is folded away)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self._affine(self.normalize(x))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class GlobalLayerNorm(_AffineNorm):
    """gLN: one mean/variance per utterance over channels and time (Luo & Mesgarani 2019, eq. 14)."""

    causal = False

    def normalize(self, x: Tensor) -> Tensor:
        return F.group_norm(x, 1, None, None, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class CumulativeLayerNorm(_AffineNorm):
    """cLN of the Conv-TasNet paper: statistics over channels and all frames up to t (eq. 16)."""

    def normalize(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"cumulative_ln expects [B, C, T], got shape {tuple(x.shape)}")
        channels = x.shape[1]
        # Cumulative sums in float32 at least: long inputs lose precision in half types.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=xf.dtype) * channels  # [T]
        cum_sum = xf.sum(dim=1).cumsum(dim=-1)  # [B, T]
        cum_pow = xf.pow(2).sum(dim=1).cumsum(dim=-1)  # [B, T]
        mean = cum_sum / count
        var = (cum_pow / count - mean.pow(2)).clamp_min(0.0)
        normed = (xf - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + self.eps)
        return normed.to(x.dtype)


class ChannelLayerNorm(_AffineNorm):
    """Per-frame LayerNorm over channels (SpeechBrain/Asteroid "cLN", transformer LayerNorm)."""

    def normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), (self.num_channels,), None, None, self.eps).movedim(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class TimeLayerNorm(_AffineNorm):
    """LayerNorm over time: one mean/variance per channel and utterance (instance norm)."""

    causal = False

    def normalize(self, x: Tensor) -> Tensor:
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps)


class RMSNorm(_AffineNorm):
    """RMSNorm over channels per frame (Zhang & Sennrich 2019); ``bias`` is kept for a uniform API."""

    def normalize(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.movedim(1, -1), (self.num_channels,), None, self.eps).movedim(-1, 1)


class DynamicTanh(_AffineNorm):
    """DyT (Zhu et al. 2025): ``tanh(alpha * x) * weight + bias``, a learnable scalar ``alpha``."""

    def __init__(self, num_channels: int, eps: float = 0.0, alpha_init: float = 0.5) -> None:
        super().__init__(num_channels, eps)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def normalize(self, x: Tensor) -> Tensor:
        return torch.tanh(self.alpha * x)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over batch and all trailing dims; accepts ``[B, C, T]`` and ``[B, C, K, S]``."""

    causal = True

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() <= 3:
            return super().forward(x)
        return super().forward(x.flatten(2)).view_as(x)


class Identity(nn.Identity):
    """The ``none`` norm."""

    causal = True


_DEFAULT_EPS: dict[str, float] = {
    "global_ln": 1e-8,
    "cumulative_ln": 1e-8,
    "channel_ln": 1e-5,
    "time_ln": 1e-5,
    "batch_norm": 1e-5,
    "rms_norm": 1e-6,
}


def build_norm(name: NormName, num_channels: int, eps: float | None = None) -> nn.Module:
    """Build the norm called ``name`` (or a paper alias) for ``num_channels`` channels.

    Args:
        name: a name in :data:`NORM_NAMES` or :data:`NORM_ALIASES`.
        num_channels: C of the ``[B, C, T]`` input.
        eps: variance floor; ``None`` takes the norm's default (1e-8 for gLN/cLN as in the paper).

    Raises:
        ValueError: unknown name (the message lists the valid ones).

    Example:
        >>> build_norm("gLN", 64)(torch.randn(2, 64, 100)).shape
        torch.Size([2, 64, 100])
    """
    canonical = canonical_norm_name(name)
    if canonical == "none":
        return Identity()
    if canonical == "dyt":
        return DynamicTanh(num_channels)
    eps = _DEFAULT_EPS[canonical] if eps is None else eps
    if canonical == "batch_norm":
        return BatchNorm(num_channels, eps=eps)
    classes: dict[str, type[_AffineNorm]] = {
        "global_ln": GlobalLayerNorm,
        "cumulative_ln": CumulativeLayerNorm,
        "channel_ln": ChannelLayerNorm,
        "time_ln": TimeLayerNorm,
        "rms_norm": RMSNorm,
    }
    return classes[canonical](num_channels, eps)


def check_causal_norm(name: str, causal: bool) -> None:
    """Raise when a causal model is asked for a norm that looks at the future."""
    if causal and not is_causal_norm(name):
        causal_names = ", ".join(sorted(CAUSAL_NORMS))
        raise ValueError(f"norm {name!r} is not causal; a causal model needs one of: {causal_names}")


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> nn.Conv1d:
    """Return a Conv1d equal to ``bn(conv(x))`` for an eval-mode BatchNorm (inference speed-up)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
    fused = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return fused
