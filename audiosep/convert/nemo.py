"""Import a NeMo QuartzNet/Jasper CTC model (``.nemo`` archive) as an audiosep ASR checkpoint.

A ``.nemo`` file is a tar (optionally gzipped) holding ``model_config.yaml`` and
``model_weights.ckpt``. Key names follow NeMo's ``ConvASREncoder``/``JasperBlock``/``ConvASRDecoder``:
``encoder.encoder.{block}.mconv.{i}.conv.weight`` where a separable sub-block ``r`` takes the layers
``5r`` (depthwise), ``5r+1`` (pointwise), ``5r+2`` (BatchNorm), then activation and dropout; a dense
sub-block takes ``4r`` (conv), ``4r+1`` (BatchNorm); the residual is ``res.0.0`` (1x1 conv) and
``res.0.1`` (BatchNorm); the head is ``decoder.decoder_layers.0``. The archive is read in memory,
never extracted, and the weights load with ``weights_only=True``.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from audiosep.asr_metadata import asr_metadata
from audiosep.checkpoint import save_model
from audiosep.errors import UserError
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures

log = logging.getLogger(__name__)

# Block options QuartzNet does not use, with the value that means "off".
UNSUPPORTED_BLOCK_OPTIONS = {
    "residual_dense": False, "se": False, "heads": -1, "groups": 1, "stride_last": False,
    "future_context": -1, "residual_mode": "add", "kernel_size_factor": 1.0,
}  # fmt: skip
ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}


def read_nemo_archive(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` from a ``.nemo`` tar, without extracting it.

    Raises:
        UserError: missing file, not a tar, or no ``model_config.yaml`` / ``model_weights.ckpt`` inside.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [n for n in ("model_config.yaml", "model_weights.ckpt") if n not in members]
            if missing:
                raise UserError(f"{path}: not a NeMo model archive (lacks {', '.join(missing)})")
            config_text = archive.extractfile(members["model_config.yaml"]).read().decode("utf-8")
            weights = archive.extractfile(members["model_weights.ckpt"]).read()
    except tarfile.TarError as err:
        raise UserError(f"{path}: not a .nemo archive ({err})") from err
    config = yaml.safe_load(config_text)
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise UserError(f"{path}: unexpected model_config.yaml or model_weights.ckpt content")
    return config, state


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A config section in the new (flat) or old (``cls`` + ``params``) NeMo layout."""
    section = config.get(name)
    if not isinstance(section, dict):
        raise UserError(f"NeMo config lacks a {name!r} section")
    return dict(section.get("params", section))


def _first(value: Any) -> int:
    """NeMo writes kernel/stride/dilation as one-element lists."""
    return int(value[0] if isinstance(value, list | tuple) else value)


def block_from_nemo(layer: dict[str, Any]) -> dict[str, Any]:
    """One ``jasper`` entry -> an audiosep block spec.

    Raises:
        UserError: features QuartzNet does not have (SE, dense residual, groups, heads, ...).
    """
    unsupported = {k: layer[k] for k, off in UNSUPPORTED_BLOCK_OPTIONS.items() if layer.get(k, off) != off}
    if unsupported:
        raise UserError(f"unsupported NeMo block options {unsupported} in {layer}")
    return {
        "channels": int(layer["filters"]),
        "kernel_size": _first(layer["kernel"]),
        "repeat": int(layer["repeat"]),
        "stride": _first(layer.get("stride", 1)),
        "dilation": _first(layer.get("dilation", 1)),
        "residual": bool(layer.get("residual", False)),
        "separable": bool(layer.get("separable", False)),
        "dropout": float(layer.get("dropout", 0.0)),
    }


def features_from_nemo(pre: dict[str, Any]) -> LogMelFeatures:
    """``AudioToMelSpectrogramPreprocessor`` settings -> :class:`LogMelFeatures`.

    Raises:
        UserError: settings the front end does not reproduce (frame splicing, non-Hann window, ...).
    """
    if int(pre.get("frame_splicing", 1)) != 1 or pre.get("window", "hann") != "hann":
        raise UserError(f"unsupported NeMo preprocessor settings: {pre}")
    if pre.get("log", True) is not True or pre.get("log_zero_guard_type", "add") != "add":
        raise UserError(f"unsupported NeMo log settings: {pre}")
    normalize = pre.get("normalize", "per_feature")
    return LogMelFeatures(
        sample_rate=int(pre.get("sample_rate", 16000)),
        n_mels=int(pre.get("features", pre.get("nfilt", 64))),
        window_size=float(pre.get("window_size", 0.02)),
        window_stride=float(pre.get("window_stride", 0.01)),
        n_fft=pre.get("n_fft"),
        preemphasis=float(pre.get("preemph", 0.97) or 0.0),
        dither=float(pre.get("dither", 1e-5)),
        normalize="none" if normalize in (None, False, "none") else str(normalize),
        f_min=float(pre.get("lowfreq", 0.0) or 0.0),
        f_max=pre.get("highfreq"),
        log_guard=float(pre.get("log_zero_guard_value", 2.0**-24)),
    )


def _nemo_conv(state: dict[str, Tensor], prefix: str) -> str:
    """Key of a (masked or plain) NeMo conv weight: ``prefix.conv.weight`` or ``prefix.weight``."""
    return f"{prefix}.conv.weight" if f"{prefix}.conv.weight" in state else f"{prefix}.weight"


def key_map(model: QuartzNet, state: dict[str, Tensor]) -> dict[str, str]:
    """audiosep state-dict key -> NeMo key, for every tensor of ``model``."""
    mapping: dict[str, str] = {}
    norm_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for b, block in enumerate(model.blocks):
        nemo = f"encoder.encoder.{b}"
        for r, layer in enumerate(block.layers):
            ours = f"blocks.{b}.layers.{r}"
            if layer.conv is None:
                base = 5 * r
                mapping[f"{ours}.depthwise.weight"] = _nemo_conv(state, f"{nemo}.mconv.{base}")
                mapping[f"{ours}.pointwise.weight"] = _nemo_conv(state, f"{nemo}.mconv.{base + 1}")
                norm_index = base + 2
            else:
                base = 4 * r
                mapping[f"{ours}.conv.weight"] = _nemo_conv(state, f"{nemo}.mconv.{base}")
                norm_index = base + 1
            mapping |= {f"{ours}.norm.{k}": f"{nemo}.mconv.{norm_index}.{k}" for k in norm_keys}
        if block.residual is not None:
            mapping[f"blocks.{b}.residual.conv.weight"] = _nemo_conv(state, f"{nemo}.res.0.0")
            mapping |= {f"blocks.{b}.residual.norm.{k}": f"{nemo}.res.0.1.{k}" for k in norm_keys}
    mapping["head.weight"] = "decoder.decoder_layers.0.weight"
    mapping["head.bias"] = "decoder.decoder_layers.0.bias"
    return mapping


def _check_filterbank(features: LogMelFeatures, state: dict[str, Tensor]) -> None:
    """Warn when the archive's mel filterbank differs from the one audiosep computes."""
    theirs = state.get("preprocessor.featurizer.fb")
    if theirs is None:
        return
    theirs = theirs.squeeze(0).float()
    ours = features.filterbank
    if theirs.shape != ours.shape or (theirs - ours).abs().max() > 1e-5 * float(ours.abs().max()):
        log.warning("the archive's mel filterbank differs from audiosep's Slaney filterbank")


def convert_nemo(path: str | os.PathLike) -> tuple[QuartzNet, dict[str, Any]]:
    """Build an audiosep :class:`QuartzNet` and its ASR metadata from a ``.nemo`` archive.

    Raises:
        UserError: unreadable archive, unsupported architecture, or weights that do not match the config.
    """
    config, state = read_nemo_archive(path)
    encoder, decoder = _section(config, "encoder"), _section(config, "decoder")
    labels = list(decoder.get("vocabulary") or config.get("labels") or [])
    if not labels:
        raise UserError(f"{path}: the config names no vocabulary (decoder.vocabulary or labels)")
    if encoder.get("normalization_mode", "batch") != "batch":
        raise UserError(f"{path}: only BatchNorm encoders are supported")
    activation = ACTIVATION_NAMES.get(str(encoder.get("activation", "relu")))
    if activation is None:
        raise UserError(f"{path}: unsupported activation {encoder.get('activation')!r}")
    features = features_from_nemo(_section(config, "preprocessor"))
    model = QuartzNet(
        in_features=int(encoder["feat_in"]),
        num_classes=len(labels) + 1,
        blocks=[block_from_nemo(layer) for layer in encoder["jasper"]],
        norm="batch_norm",
        norm_eps=1e-3,
        activation=activation,
    )
    mapping = key_map(model, state)
    absent = sorted(v for v in mapping.values() if v not in state)
    if absent:
        raise UserError(f"{path}: weights missing for the configured model, e.g. {absent[:3]}")
    try:
        model.load_state_dict({ours: state[theirs] for ours, theirs in mapping.items()}, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the configured model: {err}") from err
    unused = sorted(k for k in set(state) - set(mapping.values()) if not k.startswith("preprocessor."))
    if unused:
        raise UserError(f"{path}: weights the converter does not understand, e.g. {unused[:3]}")
    _check_filterbank(features, state)
    metadata = asr_metadata(features, labels) | {"source": f"nemo:{Path(path).name}"}
    return model.eval(), metadata


def convert_nemo_file(path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Convert ``path`` (``.nemo``) and save an audiosep model file at ``out``."""
    model, metadata = convert_nemo(path)
    save_model(model, out, metadata)
