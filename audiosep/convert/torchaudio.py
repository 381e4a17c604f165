"""Import ``torchaudio.models.ConvTasNet`` weights (e.g. its pretrained Libri2Mix bundle) into ours.

N, L, B, H, Sc, P, the number of sources and the block count X*R are read from the tensor shapes.
Two things are not in the weights and come from ``overrides`` or torchaudio's defaults:
X (dilations restart every X blocks; default 8) and the mask activation (default ``relu``, as in
torchaudio's ``conv_tasnet_base`` behind ``CONVTASNET_BASE_LIBRI2MIX``; torchaudio's plain
``ConvTasNet()`` uses ``sigmoid``). torchaudio's residual and skip 1x1 convs are concatenated into
our fused ``out_conv``; its last block has no residual conv, like ours.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from audiosep.models.conv_tasnet import ConvTasNet

TORCHAUDIO_NUM_LAYERS = 8
TORCHAUDIO_PRETRAINED_MASK_ACTIVATION = "relu"

_BLOCK_KEY = re.compile(r"mask_generator\.conv_layers\.(\d+)\.")
# torchaudio ConvBlock.conv_layers index -> our ConvBlock attribute.
_BLOCK_LAYERS = {
    "0": "in_conv",
    "1": "in_act",
    "2": "in_norm",
    "3": "depthwise",
    "4": "depthwise_act",
    "5": "depthwise_norm",
}
_TOP_LEVEL = {
    "encoder.weight": "encoder.weight",
    "decoder.weight": "decoder.weight",
    "mask_generator.input_norm.weight": "masker.bottleneck_norm.weight",
    "mask_generator.input_norm.bias": "masker.bottleneck_norm.bias",
    "mask_generator.input_conv.weight": "masker.bottleneck_conv.weight",
    "mask_generator.input_conv.bias": "masker.bottleneck_conv.bias",
    "mask_generator.output_prelu.weight": "masker.output_prelu.weight",
    "mask_generator.output_conv.weight": "masker.output_conv.weight",
    "mask_generator.output_conv.bias": "masker.output_conv.bias",
}


def infer_torchaudio_config(
    state_dict: Mapping[str, Tensor], num_layers: int = TORCHAUDIO_NUM_LAYERS
) -> dict[str, Any]:
    """Our constructor arguments for a torchaudio ConvTasNet state dict (X from ``num_layers``).

    Raises:
        KeyError: a tensor every torchaudio ConvTasNet has is missing.
        ValueError: the block count is not a multiple of ``num_layers``.
    """
    enc_num_filters, _, enc_kernel_size = state_dict["encoder.weight"].shape
    hidden_channels, _, conv_kernel_size = state_dict[
        "mask_generator.conv_layers.0.conv_layers.3.weight"
    ].shape
    num_blocks = 1 + max(int(match.group(1)) for key in state_dict if (match := _BLOCK_KEY.match(key)))
    if num_blocks % num_layers:
        raise ValueError(
            f"{num_blocks} conv blocks are not a multiple of num_layers={num_layers}; "
            "pass the X the model was built with (msk_num_layers)"
        )
    return {
        "num_sources": state_dict["mask_generator.output_conv.weight"].shape[0] // enc_num_filters,
        "enc_num_filters": enc_num_filters,
        "enc_kernel_size": enc_kernel_size,
        "bottleneck_channels": state_dict["mask_generator.input_conv.weight"].shape[0],
        "hidden_channels": hidden_channels,
        "skip_channels": state_dict["mask_generator.conv_layers.0.skip_out.weight"].shape[0],
        "conv_kernel_size": conv_kernel_size,
        "num_layers": num_layers,
        "num_repeats": num_blocks // num_layers,
        "norm": "gLN",
        "causal": False,
        "mask_activation": TORCHAUDIO_PRETRAINED_MASK_ACTIVATION,
        "encoder_activation": "linear",  # torchaudio's encoder has no ReLU
    }


def convert_torchaudio_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchaudio ConvTasNet keys to ours; residual and skip convs become one ``out_conv``."""
    converted = {ours: state_dict[theirs] for theirs, ours in _TOP_LEVEL.items()}
    num_blocks = 1 + max(int(match.group(1)) for key in state_dict if (match := _BLOCK_KEY.match(key)))
    for index in range(num_blocks):
        prefix, ours = f"mask_generator.conv_layers.{index}.", f"masker.blocks.{index}."
        for layer, name in _BLOCK_LAYERS.items():
            for param in ("weight", "bias"):
                key = f"{prefix}conv_layers.{layer}.{param}"
                if key in state_dict:
                    converted[f"{ours}{name}.{param}"] = state_dict[key]
        for param in ("weight", "bias"):
            parts = [
                state_dict[f"{prefix}{out}.{param}"]
                for out in ("res_out", "skip_out")
                if f"{prefix}{out}.{param}" in state_dict
            ]
            converted[f"{ours}out_conv.{param}"] = torch.cat(parts, dim=0)  # [B_c + Sc, ...]: residual first
    return converted


def from_torchaudio_convtasnet(state_dict: Mapping[str, Tensor], **overrides: Any) -> ConvTasNet:
    """Build our :class:`ConvTasNet` with a torchaudio ``ConvTasNet`` state dict loaded exactly.

    Args:
        state_dict: ``torchaudio.models.ConvTasNet(...).state_dict()``, e.g. the pretrained bundle's
            ``conv_tasnet_base_libri2mix.pt`` loaded with ``torch.load``.
        **overrides: constructor arguments that the weights cannot tell: ``num_layers`` (X,
            default 8) and ``mask_activation`` (default ``relu``, torchaudio's pretrained model); a warning
            names the defaults taken.

    Raises:
        KeyError: not a torchaudio ConvTasNet state dict.
        ValueError: a weight holds NaN or infinity (the model would output NaN).
        RuntimeError: the shapes do not fit the inferred configuration (strict loading).

    Example:
        >>> import torchaudio
        >>> theirs = torchaudio.models.conv_tasnet_base()
        >>> ours = from_torchaudio_convtasnet(theirs.state_dict(), num_layers=8, mask_activation="relu")
    """
    broken = [key for key, value in state_dict.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise ValueError(f"torchaudio ConvTasNet weights hold NaN or infinity (e.g. {broken[0]!r})")
    unknown = [name for name in ("num_layers", "mask_activation") if name not in overrides]
    if unknown:  # a wrong guess is no error, only other numbers (68 % off for torchaudio's own default sigmoid)
        warnings.warn(f"from_torchaudio_convtasnet: {' and '.join(unknown)} not given (the weights cannot tell): "
                      "using torchaudio's pretrained conv_tasnet_base's (X=8, relu); pass them for any other model "
                      "(torchaudio.models.ConvTasNet() defaults to sigmoid)", stacklevel=2)  # fmt: skip
    config = infer_torchaudio_config(state_dict, int(overrides.get("num_layers", TORCHAUDIO_NUM_LAYERS)))
    config.update(overrides)
    model = ConvTasNet(**config)
    model.load_state_dict(convert_torchaudio_state_dict(state_dict), strict=True)
    return model.eval()
