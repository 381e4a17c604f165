"""Normalization registry: one name -> one layer over ``[B, C, T]`` (or ``[B, C, *]``) inputs.

Why a registry: the literature reuses names for different things. The Conv-TasNet paper's
``cLN`` is *cumulative* layer norm (statistics over channels and all past frames), while
SpeechBrain and Asteroid call the per-frame channel LayerNorm ``cLN``. Here every norm has an
unambiguous name; the paper aliases keep the paper's meaning.

==================  ==========================================================  =====  =====  ====
name                statistics                                                  train  infer  fold
==================  ==========================================================  =====  =====  ====
``global_ln``       mean/var over channels and time, per utterance (``gLN``)    no     no     aff
``cumulative_ln``   mean/var over channels and frames ``<= t`` (paper ``cLN``)  yes    yes    aff
``channel_ln``      mean/var over channels per frame (SpeechBrain/Asteroid      yes    yes    aff
                    "cLN"; transformer LayerNorm, alias ``layer_norm``)
``time_ln``         mean/var over time per channel (LayerNorm over time)        no     no     aff
``batch_norm``      mean/var over batch and time; eval: running statistics      no     yes    all
``unified_norm``    E[x^2] over batch and time, geometric mean over a window,   no     yes    all
                    warm-up, outlier filter; eval: running E[x^2] (UN)
``power_norm``      divides by the running quadratic mean (PowerNorm)           no     yes    all
``rms_norm``        root-mean-square over channels per frame, no centring       yes    yes    aff
``dyt``             no statistics: ``tanh(alpha * x) * weight + bias`` (DyT)    yes    yes    aff
``elementwise_ln``  no statistics: ``sqrt(C-1) * u / sqrt(1 + u^2)``, ``u =     yes    yes    aff
                    |alpha| * x`` (ELN / DyISRU)
``none``            identity                                                    yes    yes    --
==================  ==========================================================  =====  =====  ====

"train"/"infer": causal (the output at frame t never depends on later frames) in training and at
inference. The batch-statistics norms see the whole batch, future frames included, in training;
at inference they are a per-channel affine. "fold": ``all`` when the whole norm is a per-channel
affine at inference (it folds into the neighbouring conv/linear and disappears), ``aff`` when only
its final ``weight``/``bias`` fold (:func:`audiosep.optimize.prepare_for_inference`).
Aliases: ``gLN`` -> ``global_ln``, ``cLN`` -> ``cumulative_ln`` (paper meaning), ``layer_norm``/``LN``
-> ``channel_ln``, ``BN`` -> ``batch_norm``.
Every layer has per-channel ``weight`` and ``bias`` of shape ``[C]`` (none has neither) and the
attributes ``causal`` (at inference) and ``causal_in_training``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.nn.features import length_mask

CanonicalNormName = Literal[
    "global_ln", "cumulative_ln", "channel_ln", "time_ln", "batch_norm", "unified_norm", "power_norm",
    "rms_norm", "dyt", "elementwise_ln", "none",
]  # fmt: skip
# What a ``norm:`` argument accepts: canonical names and paper aliases. Typed as a Literal so that
# LightningCLI lists the choices in ``--help`` and rejects a typo at parse time.
NormName = Literal[
    "global_ln", "cumulative_ln", "channel_ln", "time_ln", "batch_norm", "unified_norm", "power_norm",
    "rms_norm", "dyt", "elementwise_ln", "none", "gLN", "cLN", "layer_norm", "LN", "BN",
]  # fmt: skip
NORM_NAMES: tuple[str, ...] = get_args(CanonicalNormName)
NORM_ALIASES: dict[str, str] = {
    "gLN": "global_ln",
    "cLN": "cumulative_ln",
    "layer_norm": "channel_ln",
    "LN": "channel_ln",
    "BN": "batch_norm",
}
# Causal at inference (what a streaming/causal model needs).
CAUSAL_NORMS: frozenset[str] = frozenset(
    {"cumulative_ln", "channel_ln", "batch_norm", "unified_norm", "power_norm", "rms_norm", "dyt",
     "elementwise_ln", "none"}
)  # fmt: skip
# Batch statistics in training see every frame of every utterance in the batch.
BATCH_STATISTICS_NORMS: frozenset[str] = frozenset({"batch_norm", "unified_norm", "power_norm"})


def canonical_norm_name(name: str) -> CanonicalNormName:
    """Map a name or paper alias to its canonical registry name; unknown names raise."""
    canonical = NORM_ALIASES.get(name, name)
    if canonical not in NORM_NAMES:
        valid = ", ".join(NORM_NAMES + tuple(NORM_ALIASES))
        raise ValueError(f"unknown norm {name!r}; valid names: {valid}")
    return canonical


def is_causal_norm(name: str) -> bool:
    """True when the norm's output at frame t never depends on frames after t at inference."""
    return canonical_norm_name(name) in CAUSAL_NORMS


def is_causal_in_training(name: str) -> bool:
    """True when the norm is causal in training too (batch-statistics norms are not: they see the future)."""
    canonical = canonical_norm_name(name)
    return canonical in CAUSAL_NORMS and canonical not in BATCH_STATISTICS_NORMS


class _AffineNorm(nn.Module):
    """Base: per-channel ``weight``/``bias`` applied along dim 1 of ``[B, C, *]``."""

    causal = True
    causal_in_training = True

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

    causal = causal_in_training = False
    statistics_dtype: torch.dtype | None = None  # a subclass's wider sums (:func:`norm_over_valid_frames` keeps them)

    def normalize(self, x: Tensor) -> Tensor:
        return F.group_norm(_channels_first(x), 1, None, None, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(_channels_first(x), 1, self.weight, self.bias, self.eps)


def _channels_first(x: Tensor) -> Tensor:
    """``x`` in channels-first memory: torch's channels-last CPU group norm takes the variance as mean square
    minus squared mean in float32 (2e-2 off with a mean 100 times the spread, 3.2 at 1000 times)."""
    return x if x.is_contiguous() or x.device.type != "cpu" else x.contiguous()


@dataclass(frozen=True)
class CumulativeState:
    """What cLN knows of the frames so far: the first frame's mean (the shift), float64 sums, their count."""

    shift: Tensor  # [B, 1, 1]
    sum: Tensor  # [B, 1] of the shifted values
    sum_sq: Tensor  # [B, 1] of their squares
    frames: int


class CumulativeLayerNorm(_AffineNorm):
    """cLN of the Conv-TasNet paper: statistics over channels and all frames up to t (eq. 16).

    Numerically stable on long inputs: the input is shifted by the first frame's mean (known at
    t = 0, so still causal), each frame's sums of the shifted values and their squares are taken
    over the channels in at least float32, and those are accumulated over time in float64. Why:
    float32 running sums of x and x^2 lose the variance to cancellation after a few thousand frames
    (a 60 s input at 8 kHz is 60,000 frames of the demo encoder). As fast as the plain sums.
    """

    def normalize(self, x: Tensor) -> Tensor:
        return self.normalize_continued(x, None)[0]

    def normalize_continued(
        self, x: Tensor, state: CumulativeState | None
    ) -> tuple[Tensor, CumulativeState | None]:
        """:meth:`normalize` of frames that follow those ``state`` summarises (``None``: the first frames).

        Returns the normalised frames and the state after them, so a stream of blocks gives the
        numbers of the whole signal (:mod:`audiosep.streaming`).
        """
        if x.dim() != 3:
            raise ValueError(f"cumulative_ln expects [B, C, T], got shape {tuple(x.shape)}")
        if x.shape[2] == 0:
            return x, state
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # Indexed, not sliced (`[:, :, :1]`): torch.export could not reconcile the slice's size Min(1, T) over chunks.
        shift = xf[:, :, 0].mean(dim=1, keepdim=True).unsqueeze(2) if state is None else state.shift  # [B, 1, 1]
        centred = xf - shift  # [B, C, T]
        sums = centred.sum(dim=1).double().cumsum(dim=-1)  # [B, T]
        sums_sq = centred.square().sum(dim=1).double().cumsum(dim=-1)
        frames = 0 if state is None else state.frames
        if state is not None:
            sums, sums_sq = sums + state.sum, sums_sq + state.sum_sq
        count = (torch.arange(1, x.shape[2] + 1, device=x.device, dtype=torch.float64) + frames) * x.shape[1]  # [T]
        mean = sums / count
        var = (sums_sq / count - mean.square()).clamp_min(0.0)
        inv_std = torch.rsqrt(var + self.eps).to(xf.dtype).unsqueeze(1)  # [B, 1, T]
        normalised = ((centred - mean.to(xf.dtype).unsqueeze(1)) * inv_std).to(x.dtype)
        return normalised, CumulativeState(shift, sums[:, -1:], sums_sq[:, -1:], frames + x.shape[2])


class ChannelLayerNorm(_AffineNorm):
    """Per-frame LayerNorm over channels (SpeechBrain/Asteroid "cLN", transformer LayerNorm)."""

    def normalize(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), (self.num_channels,), None, None, self.eps).movedim(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class TimeLayerNorm(_AffineNorm):
    """LayerNorm over time: one mean/variance per channel and utterance (instance norm)."""

    causal = causal_in_training = False

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


class ElementwiseLayerNorm(_AffineNorm):
    """ELN (Stollenwerk 2025, arXiv 2503.21708; DyISRU in later versions): LN without statistics.

    ``y = weight * sqrt(C - 1) * u / sqrt(1 + u^2) + bias`` with ``u = |alpha| * x``: the paper's
    ``sqrt(C - 1) * x / sqrt(beta + x^2)`` with the mean taken as 0 (element-wise, as DyT) and
    ``beta = 1 / alpha^2``, a learnable scalar (``|alpha|``: a negative alpha, which training may reach, would
    flip the sign of the output). ``sqrt(C - 1)`` is the bound of an LN output, and
    ``alpha = 1 / sqrt(C - 1)`` at init makes the slope 1 at zero. ``eps`` is unused.
    """

    def __init__(self, num_channels: int, eps: float = 0.0, alpha_init: float | None = None) -> None:
        super().__init__(num_channels, eps)
        self.scale = math.sqrt(max(num_channels - 1, 1))
        alpha = 1.0 / self.scale if alpha_init is None else alpha_init
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def normalize(self, x: Tensor) -> Tensor:
        u = self.alpha.abs() * x
        return self.scale * u * torch.rsqrt(1.0 + u * u)


class _RunningQuadraticNorm(_AffineNorm):
    """Base of UN and PowerNorm: ``x / sqrt(E[x^2] + eps)`` per channel, a running E[x^2] at inference.

    The quadratic mean is over every dim but 1 (batch and time), so in training the output sees
    future frames (``causal_in_training = False``); at inference it is a per-channel affine that
    :func:`inference_affine` returns for folding.
    """

    causal_in_training = False

    def __init__(self, num_channels: int, eps: float, momentum: float, warmup_iters: int) -> None:
        super().__init__(num_channels, eps)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.momentum, self.warmup_iters = momentum, warmup_iters
        self.register_buffer("running_power", torch.ones(num_channels))
        self.register_buffer("num_iterations", torch.zeros((), dtype=torch.long))

    def _power(self, x: Tensor) -> Tensor:
        """The batch's quadratic mean per channel ``[C]`` (differentiable)."""
        return x.square().mean(dim=[d for d in range(x.dim()) if d != 1])

    def _scale(self, power: Tensor, x: Tensor) -> Tensor:
        return x * torch.rsqrt(power + self.eps).view((1, -1) + (1,) * (x.dim() - 2))

    def inference_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` with ``norm(x) == x * scale + shift`` per channel in eval mode."""
        return self.weight * torch.rsqrt(self.running_power + self.eps), self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}, warmup_iters={self.warmup_iters}"


class UnifiedNorm(_RunningQuadraticNorm):
    """Unified Normalization (Yang et al., CVPR 2022) over ``[B, C, *]``.

    Training, iteration ``i`` (counted in ``num_iterations``): the batch's quadratic mean
    ``p_i = E[x^2]`` per channel (no mean subtraction) enters a window of the last ``window``
    iterations. During the warm-up (``i < warmup_iters`` or ``i <= window``) the layer divides by
    ``sqrt(p_i + eps)``; afterwards by the geometric mean of the window (smoothed statistics).
    With ``outlier_filter``, after the warm-up, a batch whose window's arithmetic mean exceeds its
    geometric mean by more than ``window`` times the variance of the previous window's
    ``sqrt(p)`` (in any channel) is an outlier: its slot takes the running statistic instead and
    the layer divides by ``p_i`` (``num_skipped`` counts them). Then
    ``running = momentum * running + (1 - momentum) * statistic`` (the official code's convention:
    ``momentum`` weights the old value). Inference: ``weight * x / sqrt(running + eps) + bias``.

    The gradient is autograd's through this forward (the window's past entries are constants);
    the official code's approximate backward (a smoothed ``E[g z]`` and a clamped gradient ratio)
    is not reproduced.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float = 0.9,
        window: int = 4,
        warmup_iters: int = 4000,
        outlier_filter: bool = False,
    ) -> None:
        super().__init__(num_channels, eps, momentum, warmup_iters)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.outlier_filter = window, outlier_filter
        # [C, window]: channel first, as every per-channel tensor (channel pruning slices dim 0).
        self.register_buffer("window_power", torch.ones(num_channels, window))
        self.register_buffer("num_skipped", torch.zeros((), dtype=torch.long))

    def normalize(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._scale(self.running_power, x)
        self.num_iterations += 1
        step = int(self.num_iterations)
        power = self._power(x)  # [C]
        slot = step % self.window
        check = self.outlier_filter and self.window > 1
        previous_spread = self.window_power.sqrt().var() if check else None
        self.window_power[:, slot] = power.detach()
        warm = step < self.warmup_iters or step <= self.window
        skip = False
        if previous_spread is not None and not warm:
            arithmetic = self.window_power.mean(dim=1)
            geometric = self.window_power.log().mean(dim=1).exp()
            if bool(((arithmetic - geometric) > previous_spread * self.window).any()):
                self.window_power[:, slot] = self.running_power
                self.num_skipped += 1
                skip = True
        if warm or skip or self.window == 1:
            statistic = power
        else:  # geometric mean of the window, the current entry differentiable (a dead channel: no log 0)
            tiny = torch.finfo(power.dtype).tiny
            others = torch.cat((self.window_power[:, :slot], self.window_power[:, slot + 1 :]), dim=1)
            log_sum = others.clamp_min(tiny).log().sum(dim=1) + power.clamp_min(tiny).log()
            statistic = (log_sum / self.window).exp()
        self.running_power.mul_(self.momentum).add_((1 - self.momentum) * statistic.detach())
        return self._scale(statistic, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, outlier_filter={self.outlier_filter}"


class PowerNorm(_RunningQuadraticNorm):
    """PowerNorm (Shen et al., ICML 2020) over ``[B, C, *]``: divide by a running quadratic mean.

    Training, iteration ``i``: the batch's quadratic mean ``p_i = E[x^2]`` per channel. During the
    warm-up (``i <= warmup_iters``) the layer divides by ``sqrt(p_i + eps)`` and ``running`` is the
    plain average of the ``p`` so far; afterwards it divides by the *previous* running value
    ``sqrt(psi_{i-1} + eps)`` (the paper's Algorithm 1), then
    ``psi_i = momentum * psi_{i-1} + (1 - momentum) * p_i``. Inference divides by ``psi``.
    The gradient is autograd's through this forward; the paper's approximate backward correction
    is not reproduced.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.9, warmup_iters: int = 10000) -> None:
        super().__init__(num_channels, eps, momentum, warmup_iters)

    def normalize(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._scale(self.running_power, x)
        self.num_iterations += 1
        step = int(self.num_iterations)
        power = self._power(x)
        if step <= self.warmup_iters:
            self.running_power.mul_((step - 1) / step).add_(power.detach() / step)
            return self._scale(power, x)
        out = self._scale(self.running_power.clone(), x)
        self.running_power.mul_(self.momentum).add_((1 - self.momentum) * power.detach())
        return out


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over batch and all trailing dims; accepts ``[B, C, T]`` and ``[B, C, K, S]``."""

    causal = True
    causal_in_training = False

    def inference_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` with ``norm(x) == x * scale + shift`` per channel in eval mode."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() <= 3:
            return super().forward(x)
        return super().forward(x.flatten(2)).view_as(x)


class Identity(nn.Identity):
    """The ``none`` norm."""

    causal = causal_in_training = True


_DEFAULT_EPS: dict[str, float] = {
    "global_ln": 1e-8,
    "cumulative_ln": 1e-8,
    "channel_ln": 1e-5,  # torch's LayerNorm; the SepFormer family's mask network uses SpeechBrain's 1e-8 (eps is
    # not in checkpoints: changing a default would change every saved model that uses it)
    "time_ln": 1e-5,
    "batch_norm": 1e-5,
    "rms_norm": 1e-6,
    "unified_norm": 1e-5,
    "power_norm": 1e-5,
}


def norm_over_valid_frames(norm: nn.Module, x: Tensor, valid: Tensor) -> Tensor:
    """``norm(x)`` for a padded batch ``x [B, C, T]`` whose row ``b`` holds ``valid[b]`` frames, the rest padding.

    Why: gLN and time LN take their statistics over time, so padding moved every valid output of a row
    with the longest row of its batch (a QuartzNet's greedy transcript changed with its batch, reviewer);
    here they see the valid frames only, summed in float32 at least (the norm's ``statistics_dtype`` where it
    asks for more; float16 sums of 256 x 600 values overflowed to NaN, reviewer). Every other norm is per frame
    (or an affine at inference) and runs as is. No branch on the data: traced and exported models keep the
    masked statistics.
    """
    if not isinstance(norm, GlobalLayerNorm | TimeLayerNorm):
        return norm(x)
    dtype = getattr(norm, "statistics_dtype", None) or torch.promote_types(x.dtype, torch.float32)
    wide = x.to(dtype)
    mask = length_mask(valid.to(x.device), x.shape[-1]).unsqueeze(1).to(dtype)  # [B, 1, T]
    over_channels = isinstance(norm, GlobalLayerNorm)  # gLN: one mean per row; time LN: one per row and channel
    count = (mask.sum(dim=2, keepdim=True) * (x.shape[1] if over_channels else 1)).clamp_min(1)  # [B, 1, 1]
    mean, var = weighted_moments(wide, mask, (1, 2) if over_channels else (2,), count)
    return norm._affine((x - mean.to(x.dtype)) * torch.rsqrt(var + norm.eps).to(x.dtype))


def weighted_moments(x: Tensor, weight: Tensor, dims: tuple[int, ...], count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``x`` over ``dims`` counting only where the 0/1 ``weight`` is 1 (``count`` such
    values): the padding-free statistics above and SepPrune's open-channel ones
    (:func:`audiosep.pruning.masked_norms.normalize_open`, whose gate carries a gradient through ``weight``)."""
    mean = (x * weight).sum(dim=dims, keepdim=True) / count
    var = ((x - mean).square() * weight).sum(dim=dims, keepdim=True) / count
    return mean, var


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
    if canonical == "elementwise_ln":
        return ElementwiseLayerNorm(num_channels)
    eps = _DEFAULT_EPS[canonical] if eps is None else eps
    if canonical == "batch_norm":
        return BatchNorm(num_channels, eps=eps)
    classes: dict[str, type[_AffineNorm]] = {
        "global_ln": GlobalLayerNorm,
        "cumulative_ln": CumulativeLayerNorm,
        "channel_ln": ChannelLayerNorm,
        "time_ln": TimeLayerNorm,
        "rms_norm": RMSNorm,
        "unified_norm": UnifiedNorm,
        "power_norm": PowerNorm,
    }
    return classes[canonical](num_channels, eps)


def check_causal_norm(name: str, causal: bool) -> None:
    """Raise when a causal model is asked for a norm that looks at the future."""
    if causal and not is_causal_norm(name):
        causal_names = ", ".join(sorted(CAUSAL_NORMS))
        raise ValueError(f"norm {name!r} is not causal; a causal model needs one of: {causal_names}")


def inference_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` when the eval-mode ``norm`` is a per-channel affine (BN, UN, PowerNorm), else None."""
    if isinstance(norm, (BatchNorm, _RunningQuadraticNorm)):
        return norm.inference_affine()
    if isinstance(norm, nn.BatchNorm1d):  # a plain torch BatchNorm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return None


@torch.no_grad()
def fold_affine_into_conv(conv: nn.Conv1d, scale: Tensor, shift: Tensor) -> nn.Conv1d:
    """Return a Conv1d equal to ``conv(x) * scale + shift`` per output channel (exact)."""
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
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(conv_bias * scale + shift)
    return fused


def fold_batchnorm(conv: nn.Conv1d, bn: nn.Module) -> nn.Conv1d:
    """Return a Conv1d equal to ``bn(conv(x))`` for an eval-mode BatchNorm, UN or PowerNorm.

    Raises:
        TypeError: ``bn`` is not a per-channel affine at inference.
    """
    affine = inference_affine(bn)
    if affine is None:
        raise TypeError(f"{type(bn).__name__} is not a per-channel affine at inference")
    return fold_affine_into_conv(conv, *affine)
