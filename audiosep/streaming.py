"""Streaming separation with causal Conv-TasNet and RE-SepFormer: blocks in, separated blocks out, offline's numbers.

:class:`ConvTasNetStream` runs the model's own layers on each block and carries what the next block
needs: the encoder's input overlap, each depthwise conv's past frames (its causal padding), the running
sums of every cumulative layer norm (cLN), and the decoder's overlap-add tail. Per-frame norms
(BatchNorm at inference, channel LayerNorm, RMSNorm, DyT, ...) need no state. Concatenating the
outputs of :meth:`ConvTasNetStream.process` and :meth:`ConvTasNetStream.flush` gives the offline output
of the whole signal (tested within 1e-4), for any block sizes.

Latency: an output sample is final once every encoder window that covers it has been read (the
window starting at it: ``window - 1`` samples ahead), so after a block that ends on a frame boundary
the stream has returned everything up to ``window - stride`` samples before the end of the input (a window
that is a multiple of the stride; ``window - window mod stride`` otherwise);
:attr:`ConvTasNetStream.algorithmic_latency` is that in samples, for blocks a multiple of the stride
(others wait longer: :func:`block_latency`, which ``audiosep bench`` reports).

:class:`RESepFormerStream` does the same for a causal RE-SepFormer: it separates one chunk of
``chunk_size`` encoder frames at a time (the intra-chunk transformer sees the whole chunk, and the
chunk's summary is the mean of all its frames), and each inter-chunk transformer runs one new
position per chunk over its cached keys and values (its output at a chunk is what the causal
offline pass computes there). Its algorithmic latency is one chunk plus the decoder overlap:
``chunk_size * stride + window - stride`` samples (150 ms + 1 ms at 8 kHz with the paper's sizes), plus
the block, less the part of the block that lines up with the chunks.

:func:`open_stream` picks the stream class of a model (a closed list). A stream runs a copy of the
plain model made when it is opened (later edits or ``train()`` on the model do not reach it); hooked,
prepared and int8 models are refused (the stream calls the layers in its own order, and int8's per-call
activation scales differ block by block). Blocks must be finite float32 ``[batch, time]``; the returned
blocks are ordinary tensors.

RE-SepFormer's state grows with the stream: each inter-chunk layer keeps the keys and values of every
chunk so far (what the causal model attends to), in buffers that double when full, so a step's cost
grows with the attention over the past (``resepformer_base``: 8 KiB per chunk of 150 ms, 190 MiB an hour).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiosep.cost import transformed_layer
from audiosep.models.conv_tasnet import ConvBlock, ConvTasNet
from audiosep.models.masking import frame_padding
from audiosep.models.resepformer import RESepFormer
from audiosep.nn.attention import TransformerLayer
from audiosep.nn.dual_path import SequenceStack, norm_channels_last, sinusoidal_encoding
from audiosep.nn.norms import CumulativeLayerNorm, CumulativeState


class _CumulativeNormState:
    """cLN over a stream: the norm's own :meth:`~CumulativeLayerNorm.normalize_continued` with its state carried."""

    def __init__(self, norm: CumulativeLayerNorm) -> None:
        self.norm = norm
        self.state: CumulativeState | None = None

    def __call__(self, x: Tensor) -> Tensor:
        normalised, self.state = self.norm.normalize_continued(x, self.state)
        return self.norm._affine(normalised)


def _stream_norm(norm: nn.Module):
    """A callable applying ``norm`` frame block by frame block (stateful for cLN only)."""
    return _CumulativeNormState(norm) if isinstance(norm, CumulativeLayerNorm) else norm


class _BlockState:
    """One TCN block over a stream: its norms and the depthwise conv's last ``left`` input frames."""

    def __init__(self, block: ConvBlock) -> None:
        self.block = block
        self.in_norm = _stream_norm(block.in_norm)
        self.depthwise_norm = _stream_norm(block.depthwise_norm)
        self.left = block.padding[0]
        self.past: Tensor | None = None

    def __call__(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        block = self.block
        h = self.in_norm(block.in_act(block.in_conv(x)))  # [B, H, F]
        if self.left:
            if self.past is None:
                self.past = h.new_zeros(h.shape[0], h.shape[1], self.left)  # the offline causal zero padding
            h = torch.cat([self.past, h], dim=-1)
            self.past = h[..., -self.left :]
        out = block.out_conv(self.depthwise_norm(block.depthwise_act(block.depthwise(h))))
        residual = out[:, : block.residual_channels] if block.residual_channels else None
        skip = out[:, block.residual_channels :] if block.skip_channels else None
        return residual, skip


def _check_block(block: Tensor, pending: Tensor | None) -> None:
    """Refuse a block that is not finite float32 ``[batch, time]`` or not of the batch the stream carries
    (before any state changes: a refused block leaves the stream as it was)."""
    if not isinstance(block, Tensor) or block.dim() != 2:
        shown = tuple(block.shape) if isinstance(block, Tensor) else type(block).__name__
        raise ValueError(f"a stream block is a [batch, time] tensor, got {shown}")
    if block.dtype != torch.float32:
        raise ValueError(f"a stream block must be float32 (the model's dtype), got {block.dtype}")
    if pending is not None and block.shape[0] != pending.shape[0]:
        raise ValueError(f"this stream carries {pending.shape[0]} signals; got a block of {block.shape[0]}")
    if not torch.isfinite(block).all():  # NaN would also reach earlier outputs through attention
        raise ValueError("a stream block holds NaN or Inf samples")


MAX_BLOCK_MS = 10_000.0  # a stream's block is a piece of a live signal: 1e9 ms read a whole file at once (GBs)
# Modules of these packages are transforms of a model (fused, folded or quantized), not its plain layers: torch's
# own dynamic int8 streamed 7.8e-3 off offline (reviewer).


def _stream_copy(model: nn.Module, kind: type, name: str) -> nn.Module:
    """An eval-mode copy of a plain causal float32 ``kind`` model for a stream, or ``ValueError`` saying why not."""
    from audiosep.optimize import refuse_hooks

    if type(model) is not kind:
        raise ValueError(f"streaming runs a plain causal {name}, not a {type(model).__name__}")
    if not model.init_args.get("causal", False):
        raise ValueError(f"streaming needs a causal {name} (causal=True): other models look ahead")
    transformed = transformed_layer(model)
    if transformed is not None:
        raise ValueError(f"streaming runs the plain {name}, and this one is prepared or int8 ({transformed}); "
                         "stream the model it was made from")  # fmt: skip
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if dtypes - {torch.float32}:  # blocks are float32: a float64 model opened, then failed on every block
        raise ValueError(f"streaming runs float32 models; this {name} holds {', '.join(sorted(map(str, dtypes)))} weights")
    refuse_hooks(model, "streaming", "the stream calls the layers block by block in its own order")
    return copy.deepcopy(model).eval()


def block_latency(block: int, period: int, lag: int) -> int:
    """The longest wait, in samples, from a sample entering in ``block``-sample blocks to the block that returns it.

    A stream returns the output of each ``period`` (a frame, or a chunk of frames) that starts at sample
    ``t`` once its input holds ``t + lag`` samples, i.e. at the end of the first block reaching that. Over
    the periods' alignments with the blocks (``t`` a multiple of ``period``), the wait ``lag + e`` is longest
    for the smallest positive ``x = t + lag`` modulo ``block``, which is ``r = lag mod gcd`` (``gcd`` when 0):
    ``lag + block - r``. Blocks a multiple of a Conv-TasNet's stride give ``block + window - stride`` when the
    window is a multiple of the stride too (``block + window - 1`` for window 7, stride 3).
    """
    step = math.gcd(block, period)
    return lag + block - (lag % step or step)


class _LatencyMixin:
    """What both streams share: output final per ``period`` of input, ``lag`` samples after its start."""

    period: int
    lag: int

    def latency(self, block: int) -> int:
        """The longest wait, in samples, from a sample's place in the input to the ``process`` call of
        ``block``-sample blocks that returns it (:func:`block_latency`)."""
        return block_latency(block, self.period, self.lag)


class ConvTasNetStream(_LatencyMixin):
    """Separate a causal :class:`ConvTasNet` input block by block.

    Example:
        >>> stream = ConvTasNetStream(model)  # doctest: +SKIP
        >>> parts = [stream.process(block) for block in blocks] + [stream.flush()]  # doctest: +SKIP
        >>> torch.cat(parts, dim=-1)  # == model(torch.cat(blocks, dim=-1)) within 1e-4  # doctest: +SKIP

    Raises:
        ValueError: the model is not a causal Conv-TasNet.
    """

    def __init__(self, model: ConvTasNet) -> None:
        self.model = _stream_copy(model, ConvTasNet, "Conv-TasNet")
        self.window, self.stride = model.enc_kernel_size, model.stride
        self.period, self.lag = self.stride, self.window  # a frame's output is final once its window is in
        self.algorithmic_latency = self.latency(self.stride) - self.stride  # window - stride for an even window
        self.reset()

    def reset(self) -> None:
        """Start a new signal."""
        masker = self.model.masker
        self._bottleneck_norm = _stream_norm(masker.bottleneck_norm)
        self._blocks = [_BlockState(block) for block in masker.blocks]
        self._pending: Tensor | None = None  # padded input not yet consumed by a frame
        self._tail: Tensor | None = None  # decoder overlap-add tail
        self._to_drop = self.stride  # the offline left padding's output
        self._seen = 0
        self._emitted = 0

    def _frames(self, padded: Tensor) -> Tensor:
        """Output samples of every complete frame in ``padded`` (the rest stays pending)."""
        count = (padded.shape[-1] - self.window) // self.stride + 1 if padded.shape[-1] >= self.window else 0
        model, masker = self.model, self.model.masker
        if count == 0:
            self._pending = padded
            return padded.new_zeros(padded.shape[0], model.num_sources, 0)
        used = (count - 1) * self.stride + self.window
        features = model.encoder_act(model.encoder(padded[:, None, :used]))  # [B, N, F]
        self._pending = padded[:, count * self.stride :]
        x = masker.bottleneck_conv(self._bottleneck_norm(features))
        skip_sum: Tensor | None = None
        for state in self._blocks:
            residual, skip = state(x)
            if residual is not None:
                x = x + residual
            if skip is not None:
                skip_sum = skip if skip_sum is None else skip_sum + skip
        masks = masker.output_conv(masker.output_prelu(x if skip_sum is None else skip_sum))
        masks = masker.mask_act(masks.unflatten(1, (model.num_sources, -1)))  # [B, S, N, F]
        decoded = model.decoder((masks * features.unsqueeze(1)).flatten(0, 1))[:, 0]  # [B*S, (F-1)s + L]
        if self._tail is not None:
            decoded[:, : self._tail.shape[-1]] += self._tail
        self._tail = decoded[:, count * self.stride :]
        return decoded[:, : count * self.stride].unflatten(0, (padded.shape[0], model.num_sources))

    def _emit(self, samples: Tensor) -> Tensor:
        drop = min(self._to_drop, samples.shape[-1])
        self._to_drop -= drop
        samples = samples[..., drop:]
        self._emitted += samples.shape[-1]
        return samples

    @torch.no_grad()
    def process(self, block: Tensor) -> Tensor:
        """``block[B, n]`` (any n) -> the newly final output samples ``[B, S, n']``."""
        _check_block(block, self._pending)
        if self._pending is None:
            self._pending = block.new_zeros(block.shape[0], self.stride)  # the offline left padding
        out = self._emit(self._frames(torch.cat([self._pending, block], dim=-1)))
        self._seen += block.shape[-1]
        return out

    @torch.no_grad()
    def flush(self) -> Tensor:
        """End the signal: the remaining output samples, padded exactly as offline pads the end."""
        if self._pending is None:
            raise ValueError("flush() before any process() call")
        _, right = self.model.padding(self._seen)
        done = self._frames(torch.cat([self._pending, self._pending.new_zeros(self._pending.shape[0], right)], -1))
        tail = self._tail.unflatten(0, (done.shape[0], self.model.num_sources))
        remaining = self._emit(torch.cat([done, tail], dim=-1))
        remaining = remaining[..., : self._seen - (self._emitted - remaining.shape[-1])]
        self.reset()
        return remaining


class _InterChunkState:
    """One inter-chunk pass of RE-SepFormer over a stream of chunk summaries, one position per call.

    Keeps every transformer layer's keys and values of the chunks so far (a causal layer's output
    at a position depends on the earlier positions only through them) and the state of a
    cumulative norm after the stack. The keys and values live in ``[2, B, H, capacity, d]`` buffers
    that double when full: appending copied the whole cache at every chunk (the streaming review measured, after
    4 h of 150 ms chunks, a 750 MiB cache and 0.4-0.6 s per 150 ms chunk).
    """

    def __init__(self, stack: SequenceStack, norm: nn.Module) -> None:
        self.stack = stack
        self.norm = _stream_norm(norm)
        self.position = 0
        self.caches: list[Tensor | None] = [None] * (len(stack.layers) * stack.repeats)

    def _cache(self, index: int, keys_values: Tensor) -> Tensor:
        """Append this position's ``[2, B, H, 1, d]`` keys and values; the ones so far ``[2, B, H, position + 1, d]``."""
        cache = self.caches[index]
        if cache is None or cache.shape[3] == self.position:
            grown = keys_values.new_empty(*keys_values.shape[:3], max(16, 2 * self.position), keys_values.shape[4])
            if cache is not None:
                grown[:, :, :, : self.position] = cache
            cache = self.caches[index] = grown
        cache[:, :, :, self.position] = keys_values[:, :, :, 0]
        return cache[:, :, :, : self.position + 1]

    def _attend(self, layer: TransformerLayer, h: Tensor, index: int) -> Tensor:
        attention = layer.attention
        batch, _, dim = h.shape
        q, k, v = attention.qkv(h).view(batch, 1, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, 1, d]
        k, v = self._cache(index, torch.stack([k, v]))
        y = F.scaled_dot_product_attention(q, k, v)  # every cached key is at or before this position
        return attention.out(y.transpose(1, 2).reshape(batch, 1, dim))

    def _layer(self, layer: TransformerLayer, x: Tensor, index: int) -> Tensor:
        if layer.pre_norm:
            x = x + self._attend(layer, layer.norm1(x), index)
            return x + layer.ffn(layer.norm2(x))
        x = layer.norm1(x + self._attend(layer, x, index))
        return layer.norm2(x + layer.ffn(x))

    def __call__(self, summary: Tensor) -> Tensor:
        """Chunk summary ``[B, N]`` -> the chunk's memory ``[B, N]`` (``norm(inter(m)) + m`` at this position)."""
        x = summary[:, None] + sinusoidal_encoding(1, summary.shape[-1], summary.device, summary.dtype, self.position)
        index = 0
        for layer in self.stack.layers:
            for _ in range(self.stack.repeats):
                x = self._layer(layer, x, index)
                index += 1
        y = self.stack.norm(x)  # [B, 1, N]
        normed = self.norm(y.transpose(1, 2)).transpose(1, 2)  # a registry norm on [B, N, 1]
        self.position += 1
        return (normed + summary[:, None])[:, 0]


class RESepFormerStream(_LatencyMixin):
    """Separate a causal :class:`RESepFormer` input block by block (one chunk of frames at a time).

    Same use as :class:`ConvTasNetStream`: ``process(block)`` returns the newly final samples,
    ``flush()`` the rest; their concatenation equals ``model(mixture)`` (within 1e-4).

    Raises:
        ValueError: the model is not a causal RE-SepFormer.
    """

    def __init__(self, model: RESepFormer) -> None:
        self.model = _stream_copy(model, RESepFormer, "RE-SepFormer")
        self.window, self.stride = model.encoder.kernel_size[0], model.encoder.stride[0]
        self.chunk_size = model.masker.chunk_size
        self.num_sources = model.masker.num_sources
        self.algorithmic_latency = self.chunk_size * self.stride + self.window - self.stride
        # a chunk's output is final once its last frame's window is in
        self.period, self.lag = self.chunk_size * self.stride, self.algorithmic_latency
        self.reset()

    def reset(self) -> None:
        """Start a new signal."""
        masker = self.model.masker
        self._inter = [_InterChunkState(stack, norm) for stack, norm in zip(masker.inter, masker.inter_norms, strict=True)]
        self._pending: Tensor | None = None  # input samples not yet consumed by a frame
        self._features: Tensor | None = None  # encoder frames [B, f, N] of the chunk being filled
        self._tail: Tensor | None = None  # decoder overlap-add tail [B*C, window - stride]
        self._seen = 0
        self._emitted = 0

    def _encode(self, samples: Tensor) -> None:
        """Encode every complete frame of ``samples`` (appended to the pending input) into the frame buffer."""
        padded = torch.cat([self._pending, samples], dim=-1)
        count = (padded.shape[-1] - self.window) // self.stride + 1 if padded.shape[-1] >= self.window else 0
        if count:
            used = (count - 1) * self.stride + self.window
            frames = F.relu(self.model.encoder(padded[:, None, :used])).transpose(1, 2)  # [B, count, N]
            self._features = frames if self._features is None else torch.cat([self._features, frames], dim=1)
        self._pending = padded[:, count * self.stride :]

    def _chunk(self, features: Tensor) -> Tensor:
        """One chunk ``[B, K, N]`` through the mask network's blocks (intra, then memory, ...)."""
        masker = self.model.masker
        x = features
        for index, (intra, norm) in enumerate(zip(masker.intra, masker.intra_norms, strict=True)):
            if index > 0:
                x = x + self._inter[index - 1](x.mean(dim=1))[:, None]
            x = norm_channels_last(norm, intra(x)) + x
        return x

    def _separate(self, features: Tensor, valid: int) -> Tensor:
        """Decode the first ``valid`` frames of a chunk: the newly final samples ``[B, C, valid * stride]``."""
        masker, batch = self.model.masker, features.shape[0]
        x = self._chunk(features)[:, :valid]
        masks = F.relu(masker.to_masks(masker.prelu(x))).view(batch, valid, self.num_sources, -1)  # [B, f, C, N]
        masked = masks.permute(0, 2, 3, 1) * features[:, :valid].transpose(1, 2)[:, None]  # [B, C, N, f]
        decoded = self.model.decoder(masked.flatten(0, 1))[:, 0]  # [B*C, (f-1)s + W]
        if self._tail is not None:
            decoded[:, : self._tail.shape[-1]] += self._tail
        self._tail = decoded[:, valid * self.stride :]
        return decoded[:, : valid * self.stride].unflatten(0, (batch, self.num_sources))

    def _full_chunks(self) -> list[Tensor]:
        parts = []
        while self._features is not None and self._features.shape[1] >= self.chunk_size:
            chunk, self._features = self._features[:, : self.chunk_size], self._features[:, self.chunk_size :]
            parts.append(self._separate(chunk, self.chunk_size))
        return parts

    @torch.no_grad()
    def process(self, block: Tensor) -> Tensor:
        """``block[B, n]`` (any n) -> the newly final output samples ``[B, C, n']``."""
        _check_block(block, self._pending)
        if self._pending is None:
            self._pending = block.new_zeros(block.shape[0], 0)
        self._encode(block)
        self._seen += block.shape[-1]
        parts = self._full_chunks()
        out = torch.cat(parts, dim=-1) if parts else block.new_zeros(block.shape[0], self.num_sources, 0)
        self._emitted += out.shape[-1]
        return out

    @torch.no_grad()
    def flush(self) -> Tensor:
        """End the signal: the remaining output samples, the end padded exactly as offline pads it."""
        if self._pending is None:
            raise ValueError("flush() before any process() call")
        batch = self._pending.shape[0]
        cover = self.model.tail == "pad" or self._seen < self.window  # "drop": no frame for the last samples
        self._encode(self._pending.new_zeros(batch, frame_padding(self._seen, self.window, self.stride) if cover else 0))
        parts = self._full_chunks()
        left = 0 if self._features is None else self._features.shape[1]
        if left:  # the last chunk, zero-padded to a whole one as offline does
            chunk = F.pad(self._features, (0, 0, 0, self.chunk_size - left))
            parts.append(self._separate(chunk, left))
        tail = self._tail.unflatten(0, (batch, self.num_sources))
        remaining = torch.cat([*parts, tail], dim=-1)[..., : self._seen - self._emitted]
        remaining = F.pad(remaining, (0, self._seen - self._emitted - remaining.shape[-1]))  # "drop": zeros
        self.reset()
        return remaining


STREAMS = {ConvTasNet: ConvTasNetStream, RESepFormer: RESepFormerStream}


def open_stream(model: nn.Module) -> ConvTasNetStream | RESepFormerStream:
    """A fresh stream of ``model``: causal Conv-TasNet or causal RE-SepFormer.

    Raises:
        ValueError: the model cannot stream (another class, or it looks ahead).
    """
    stream_class = STREAMS.get(type(model))
    if stream_class is None:
        raise ValueError(f"streaming runs a plain causal Conv-TasNet or RE-SepFormer (other models look ahead), "
                         f"not a {type(model).__name__}")  # fmt: skip
    return stream_class(model)
