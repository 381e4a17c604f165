"""Streaming separation with a causal Conv-TasNet: blocks in, separated blocks out, offline's numbers.

:class:`ConvTasNetStream` runs the model's own layers on each block and carries what the next block
needs: the encoder's input overlap, each depthwise conv's past frames (its causal padding), the running
sums of every cumulative layer norm (cLN), and the decoder's overlap-add tail. Per-frame norms
(BatchNorm at inference, channel LayerNorm, RMSNorm, DyT, ...) need no state. Concatenating the
outputs of :meth:`ConvTasNetStream.process` and :meth:`ConvTasNetStream.flush` gives the offline output
of the whole signal (tested within 1e-4), for any block sizes.

Latency: an output sample is final once the encoder window that covers it has been read, so the
stream returns everything up to ``window - stride`` samples before the end of the input so far;
:attr:`ConvTasNetStream.algorithmic_latency` is that in samples, plus the block length the caller
buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audiosep.models.conv_tasnet import ConvBlock, ConvTasNet
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


class ConvTasNetStream:
    """Separate a causal :class:`ConvTasNet` input block by block.

    Example:
        >>> stream = ConvTasNetStream(model)  # doctest: +SKIP
        >>> parts = [stream.process(block) for block in blocks] + [stream.flush()]  # doctest: +SKIP
        >>> torch.cat(parts, dim=-1)  # == model(torch.cat(blocks, dim=-1)) within 1e-4  # doctest: +SKIP

    Raises:
        ValueError: the model is not a causal Conv-TasNet.
    """

    def __init__(self, model: ConvTasNet) -> None:
        if not isinstance(model, ConvTasNet) or not model.init_args.get("causal", False):
            raise ValueError("streaming needs a causal Conv-TasNet (causal=True): other models look ahead")
        self.model = model.eval()
        self.window, self.stride = model.enc_kernel_size, model.stride
        self.algorithmic_latency = self.window - self.stride
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

    @torch.inference_mode()
    def process(self, block: Tensor) -> Tensor:
        """``block[B, n]`` (any n) -> the newly final output samples ``[B, S, n']``."""
        if block.dim() != 2:
            raise ValueError(f"a stream block is [batch, time], got shape {tuple(block.shape)}")
        if self._pending is not None and block.shape[0] != self._pending.shape[0]:
            raise ValueError(f"this stream carries {self._pending.shape[0]} signals; got a block of {block.shape[0]}")
        if self._pending is None:
            self._pending = block.new_zeros(block.shape[0], self.stride)  # the offline left padding
        self._seen += block.shape[-1]
        return self._emit(self._frames(torch.cat([self._pending, block], dim=-1)))

    @torch.inference_mode()
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
