"""Import a NeMo QuartzNet/Jasper CTC model (``.nemo`` archive) as an audiosep ASR checkpoint.

A ``.nemo`` file is a tar (optionally gzipped) holding ``model_config.yaml`` and
``model_weights.ckpt``. Key names follow NeMo's ``ConvASREncoder``/``JasperBlock``/``ConvASRDecoder``:
``encoder.encoder.{block}.mconv.{i}.conv.weight`` where a separable sub-block ``r`` takes the layers
``5r`` (depthwise), ``5r+1`` (pointwise), ``5r+2`` (BatchNorm), then activation and dropout; a dense
sub-block takes ``4r`` (conv), ``4r+1`` (BatchNorm); the residual is ``res.0.0`` (1x1 conv) and
``res.0.1`` (BatchNorm); the head is ``decoder.decoder_layers.0``.

The archive is untrusted input, read in memory and never extracted: each member is refused by the
size its tar header states before it is read (the weights may not exceed what the configured model
holds), the YAML is read as plain data without aliases, the weights must be a zip of uncompressed
entries (as ``torch.save`` writes: a compressed entry would expand in memory past that bound), load
with ``weights_only=True`` and must be dense finite tensors, and the model is first built on the meta device and checked
against the stored shapes (:func:`audiosep.checkpoint.model_from_record`) before it is built on the
CPU. Every failure is a one-line :class:`~audiosep.errors.UserError` naming the archive.

The checks shared with :mod:`audiosep.convert.speechbrain` live in :mod:`audiosep.convert.untrusted`.
"""

from __future__ import annotations

import functools
import io
import logging
import lzma
import math
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from torch import Tensor, nn

from audiosep.asr_metadata import asr_metadata
from audiosep.checkpoint import (
    FLOAT_RANGES,
    MAX_SAMPLE_RATE,
    CheckpointError,
    build_untrusted,
    is_size,
    save_model,
)
from audiosep.convert.untrusted import (
    MAX_YAML_BYTES,
    build_on_meta,
    load_weights,
    parse_untrusted_yaml,
    prefixed_errors,
    rebuild_checked,
)
from audiosep.data.tokenizer import CharTokenizer
from audiosep.errors import UserError, brief_repr, one_line
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures

log = logging.getLogger(__name__)

CONFIG_MEMBER, WEIGHTS_MEMBER = "model_config.yaml", "model_weights.ckpt"
MAX_MEMBERS = 1000  # a .nemo holds its config, its weights and a few tokenizer files
MAX_SUB_BLOCKS = 512  # QuartzNet 15x5 has 79 sub-blocks, Jasper 10x5 54
# model_weights.ckpt may hold at most 8 bytes per value of the configured model and front end
# (float64; NeMo writes float32) plus 4 KiB of zip and pickle records per tensor, and never more
# than 2 GiB (the largest NeMo Jasper, 10x5 with 333 M parameters, stores 1.3 GB): checked from the
# tar header before reading, and its zip entries must be stored uncompressed (load_weights): a small
# compressed archive cannot expand beyond what its own config claims the model holds (at most
# MAX_WEIGHTS_BYTES, read in memory), however small the config is.
WEIGHT_BYTES_PER_VALUE, WEIGHT_BYTES_PER_TENSOR, MAX_WEIGHTS_BYTES = 8, 4096, 2 << 30
MAX_ARCHIVE_BYTES = MAX_WEIGHTS_BYTES + (64 << 20)  # the weights, the config and a few tokenizer files
ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's files start
MAX_EXTENDED_HEADER_BYTES = 1 << 16  # a pax header or GNU long name: a path and a few attributes
MEMBER_LIMITS = {CONFIG_MEMBER: (MAX_YAML_BYTES, "a NeMo config needs"), WEIGHTS_MEMBER: (MAX_WEIGHTS_BYTES, "audiosep reads")}
EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)  # fmt: skip
# The front end sizes that audiosep.transcriber accepts when it reads the converted file back.
FEATURE_LIMITS = {"sample_rate": MAX_SAMPLE_RATE, "n_fft": 1 << 16, "n_mels": 1 << 10}
# Errors of a damaged tar or of its gzip/bz2/xz compression, once the archive is open.
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)

# Block options QuartzNet does not use, with the value that means "off".
UNSUPPORTED_BLOCK_OPTIONS = {
    "residual_dense": False, "se": False, "heads": -1, "groups": 1, "stride_last": False,
    "future_context": -1, "residual_mode": "add", "kernel_size_factor": 1.0,
}  # fmt: skip
# Preprocessor options the front end reproduces only with this value.
FIXED_PREPROCESSOR_OPTIONS = {  # NeMo's defaults; other values change the features (reviewer: up to 0.89 off)
    "frame_splicing": 1,
    "window": "hann",
    "log": True,
    "log_zero_guard_type": "add",
    "mag_power": 2.0,
    "exact_pad": False,
    "stft_exact_pad": False,
    "mel_norm": "slaney",
}
ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}

# --- the NeMo config ------------------------------------------------------------------------------


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A config section in the new (flat) or old (``cls`` + ``params``) NeMo layout."""
    section = config.get(name)
    if not isinstance(section, dict):
        raise UserError(f"NeMo config lacks a {name!r} section")
    params = section.get("params", section)
    if not isinstance(params, dict):
        raise UserError(f"NeMo config {name!r} params are a {type(params).__name__}, not a mapping")
    return params


def _size(value: Any, what: str) -> int:
    """A positive int read from the config (bools, strings and floats are refused)."""
    if not is_size(value):
        raise UserError(f"{what} must be a positive integer, got {brief_repr(value)}")
    return value


def _first(value: Any) -> Any:
    """NeMo writes kernel/stride/dilation as one-element lists."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def block_from_nemo(layer: Any) -> dict[str, Any]:
    """One ``jasper`` entry -> an audiosep block spec.

    Raises:
        UserError: features QuartzNet does not have (SE, dense residual, groups, heads, ...), sizes
            that are not positive integers, or a dropout that is no probability (NaN, 1, -0.1).
    """
    if not isinstance(layer, dict):
        raise UserError(f"a block must be a mapping, got {brief_repr(layer)}")
    unsupported = {k: layer[k] for k, off in UNSUPPORTED_BLOCK_OPTIONS.items() if layer.get(k, off) != off}
    if unsupported:
        raise UserError(f"unsupported NeMo block options {brief_repr(unsupported)}")
    dropout = layer.get("dropout", 0.0)
    within, allowed = FLOAT_RANGES["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not within(dropout):
        raise UserError(f"dropout must be a number {allowed}, got {brief_repr(dropout)}")
    return {
        "channels": _size(layer.get("filters"), "filters"),
        "kernel_size": _size(_first(layer.get("kernel")), "kernel"),
        "repeat": _size(layer.get("repeat"), "repeat"),
        "stride": _size(_first(layer.get("stride", 1)), "stride"),
        "dilation": _size(_first(layer.get("dilation", 1)), "dilation"),
        "residual": bool(layer.get("residual", False)),
        "separable": bool(layer.get("separable", False)),
        "dropout": dropout,
    }


def quartznet_args(config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """:class:`QuartzNet` constructor arguments from the ``encoder`` section.

    Raises:
        UserError: an encoder audiosep does not implement, or bad block sizes.
    """
    encoder = _section(config, "encoder")
    if encoder.get("normalization_mode", "batch") != "batch":
        raise UserError("only BatchNorm encoders are supported")
    activation = encoder.get("activation", "relu")
    if not isinstance(activation, str) or activation not in ACTIVATION_NAMES:
        raise UserError(f"unsupported activation {brief_repr(activation)}")
    jasper = encoder.get("jasper")
    if not isinstance(jasper, list) or not jasper:
        raise UserError("the encoder has no 'jasper' block list")
    blocks = []
    for index, layer in enumerate(jasper):
        try:
            blocks.append(block_from_nemo(layer))
        except UserError as err:
            raise UserError(f"encoder jasper block {index}: {err}") from None
    sub_blocks = sum(block["repeat"] for block in blocks)
    if sub_blocks > MAX_SUB_BLOCKS:
        raise UserError(f"the encoder has {sub_blocks} sub-blocks; at most {MAX_SUB_BLOCKS} are supported")
    return {
        "in_features": _size(encoder.get("feat_in"), "encoder feat_in"),
        "num_classes": num_classes,
        "blocks": blocks,
        "norm": "batch_norm",
        "norm_eps": 1e-3,
        "activation": ACTIVATION_NAMES[activation],
    }


def vocabulary_from_nemo(config: dict[str, Any]) -> list[str]:
    """The CTC labels (``decoder.vocabulary``, or the old top-level ``labels``): single characters."""
    labels = _section(config, "decoder").get("vocabulary") or config.get("labels")
    if not isinstance(labels, list) or not labels:
        raise UserError("the config names no vocabulary (decoder.vocabulary or labels)")
    try:
        CharTokenizer(labels)
    except (TypeError, ValueError) as err:
        raise UserError(f"unsupported vocabulary: {one_line(err)}") from None
    return labels


def _yaml_float(value: Any) -> Any:
    """A float written as YAML 1.1 reads it: ``1e-05`` (no dot) is a string there, but NeMo means a number.

    Anything that is not a number string is returned as it is, for the type checks to refuse.
    """
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _nemo_seconds(pre: dict[str, Any], seconds_key: str, samples_key: str, default: float) -> Any:
    """A window size or stride in seconds as NeMo takes it: ``int(seconds * rate)`` samples (truncated, where
    audiosep rounds: 0.064 off at 22.05 kHz), or the sample count ``n_window_size``/``n_window_stride``.

    Anything that is not a number is returned as it is, for the type checks to refuse.
    """
    rate, seconds, samples = pre.get("sample_rate", 16000), pre.get(seconds_key), pre.get(samples_key)
    if seconds is not None and samples is not None:
        raise UserError(f"both {seconds_key} and {samples_key} are set (NeMo refuses that too)")
    value = _yaml_float(default if seconds is None and samples is None else seconds)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (rate, value or 0))
    if samples is not None:
        return samples / rate if numbers and isinstance(samples, int) and not isinstance(samples, bool) else samples
    return int(value * rate) / rate if numbers and rate > 0 else value


def _nemo_n_fft(pre: dict[str, Any], window_size: Any) -> Any:
    """``n_fft``, or NeMo's default when unset: the window length in samples rounded up to a power of two."""
    n_fft, rate = pre.get("n_fft"), pre.get("sample_rate", 16000)
    if n_fft is not None or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in (rate, window_size)
    ):
        return n_fft  # build_untrusted refuses a missing or bad value
    try:
        return 1 << (round(rate * window_size) - 1).bit_length()
    except (ValueError, OverflowError):  # NaN or infinite window: refused by build_untrusted
        return None


def features_from_nemo(pre: dict[str, Any]) -> LogMelFeatures:
    """``AudioToMelSpectrogramPreprocessor`` settings -> :class:`LogMelFeatures`.

    Raises:
        UserError: settings the front end does not reproduce (frame splicing, non-Hann window, ...),
            sizes out of the range audiosep reads back (``FEATURE_LIMITS``), or non-finite or
            out-of-range floats (``preemph``, ``log_zero_guard_value``, ``highfreq`` above Nyquist,
            ...: :data:`audiosep.checkpoint.FLOAT_RANGES`), which would make NaN features.
    """
    for key, supported in FIXED_PREPROCESSOR_OPTIONS.items():
        if pre.get(key, supported) != supported:
            raise UserError(
                f"unsupported NeMo preprocessor setting {key}={brief_repr(pre[key])} "
                f"(supported: {supported!r})"
            )
    normalize = pre.get("normalize", "per_feature")
    kwargs = {
        "sample_rate": pre.get("sample_rate", 16000),
        "n_mels": pre.get("features", pre.get("nfilt", 64)),
        "window_size": (window_size := _nemo_seconds(pre, "window_size", "n_window_size", 0.02)),
        "window_stride": _nemo_seconds(pre, "window_stride", "n_window_stride", 0.01),
        "n_fft": _nemo_n_fft(pre, window_size),
        "preemphasis": _yaml_float(pre.get("preemph", 0.97)) or 0.0,
        "dither": _yaml_float(pre.get("dither", 1e-5)),
        "normalize": "none" if normalize in (None, False, "none") else normalize,
        "f_min": pre.get("lowfreq", 0.0) or 0.0,
        "f_max": pre.get("highfreq"),
        "log_guard": _yaml_float(pre.get("log_zero_guard_value", 2.0**-24)),
        "frame_count": "nemo",  # NeMo's get_seq_len: N // hop valid frames
    }
    try:
        return build_untrusted(LogMelFeatures, kwargs, FEATURE_LIMITS)
    except CheckpointError as err:
        raise UserError(f"unsupported NeMo preprocessor: {err}") from None


# --- the archive ----------------------------------------------------------------------------------


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extended header (pax, GNU long name) larger than :data:`MAX_EXTENDED_HEADER_BYTES`.

    Why: tarfile reads such a header whole before it hands out the member, so an 8.6 KB compressed
    archive whose pax header decompresses to gigabytes took 2.7 GB of memory before any size check.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise UserError(f"an extended tar header of {self.size} bytes (at most {MAX_EXTENDED_HEADER_BYTES}): "
                            "not a NeMo model archive")  # fmt: skip
        return super()._proc_member(tarfile_)


def _member_bytes(archive: tarfile.TarFile, weights_limit: Callable[[bytes], int]) -> dict[str, bytes]:
    """The config's and the weights' bytes, in one pass over the archive (opened in stream mode).

    Each must be exactly one regular file (in whatever folder); the members' declared sizes add up
    to at most :data:`MAX_ARCHIVE_BYTES`, checked before a member is read or skipped, so a compressed
    archive is decompressed once and never past that (a 8 KB bz2 file of 3 GiB of zeros took 25 s).
    The weights are refused before reading when larger than ``weights_limit(config)`` allows; so the config
    must come first (as in NeMo's archives), and the weights must start as a zip file (``torch.save``).
    """
    found: dict[str, tuple[str, bytes]] = {}
    total = 0
    for count, member in enumerate(archive, 1):
        total += member.size
        if count > MAX_MEMBERS:
            raise UserError(f"more than {MAX_MEMBERS} members: not a NeMo model archive")
        if total > MAX_ARCHIVE_BYTES:
            raise UserError(f"its members hold more than {MAX_ARCHIVE_BYTES} bytes: not a NeMo model archive")
        name = PurePosixPath(member.name).name
        if name not in MEMBER_LIMITS:
            continue
        if name in found:
            paths = brief_repr([found[name][0], member.name])
            raise UserError(f"ambiguous archive: 2 members named {name} ({paths})")
        if not member.isfile():
            raise UserError(f"{name} is a link or a special file, not a regular file")
        limit, what = MEMBER_LIMITS[name]
        if name == WEIGHTS_MEMBER and CONFIG_MEMBER not in found:  # the flat 2 GiB bound: 4.7 GB of memory (reviewer)
            raise UserError(f"{WEIGHTS_MEMBER} comes before {CONFIG_MEMBER}, which bounds its size (NeMo writes the "
                            "config first); repack the archive with the config first")  # fmt: skip
        if name == WEIGHTS_MEMBER:
            limit, what = weights_limit(found[CONFIG_MEMBER][1]), "the model can hold"
        with prefixed_errors(name):
            found[name] = (member.name, _read_member(archive, member, limit, what))
    missing = [name for name in MEMBER_LIMITS if name not in found]
    if missing:
        raise UserError(f"not a NeMo model archive (lacks {', '.join(missing)})")
    return {name: data for name, (_, data) in found.items()}


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise UserError(f"{size} bytes, more than {what} ({limit} bytes)")


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int, what: str) -> bytes:
    """A member's bytes, refused from the size in its header, before any reading, when over ``limit``."""
    _check_size(member.size, limit, what)
    file = archive.extractfile(member)
    head = file.read(len(ZIP_MAGIC))
    if PurePosixPath(member.name).name == WEIGHTS_MEMBER and head != ZIP_MAGIC:  # refused before the rest is inflated
        raise UserError(f"not a readable PyTorch checkpoint (not a zip file: it starts with {head!r})")
    return head + file.read()


def _read_config(data: bytes) -> dict[str, Any]:
    """``model_config.yaml`` as plain data (a mapping)."""
    config = parse_untrusted_yaml(data)
    if not isinstance(config, dict):
        raise UserError(f"holds a {type(config).__name__}, not a mapping")
    return config


def _weights_limit(model: nn.Module, features: LogMelFeatures) -> int:
    """The largest ``model_weights.ckpt`` the configured model and front end justify (MAX_WEIGHTS_BYTES)."""
    tensors = [*model.state_dict().values(), features.window, features.filterbank]
    needed = sum(WEIGHT_BYTES_PER_VALUE * t.numel() + WEIGHT_BYTES_PER_TENSOR for t in tensors)
    return min(needed, MAX_WEIGHTS_BYTES)


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
        raise UserError("the archive's mel filterbank (preprocessor.featurizer.fb) differs from the Slaney one audiosep "
                        "computes from its settings: the features would not be the model's")  # fmt: skip


def _configured(data: bytes) -> tuple[list[str], LogMelFeatures, QuartzNet]:
    """Labels, front end and (weightless) model of a ``model_config.yaml``."""
    with prefixed_errors(CONFIG_MEMBER):
        config = _read_config(data)
    labels = vocabulary_from_nemo(config)
    features = features_from_nemo(_section(config, "preprocessor"))
    meta = build_on_meta(QuartzNet, quartznet_args(config, len(labels) + 1))
    if meta.in_features != features.n_mels:
        raise UserError(f"encoder feat_in {meta.in_features} != preprocessor features {features.n_mels}")
    return labels, features, meta


def _convert_archive(archive: tarfile.TarFile) -> tuple[QuartzNet, LogMelFeatures, list[str]]:
    """Model, front end and labels of an open ``.nemo``: config first, then weights within its bounds."""
    configured = functools.cache(_configured)  # read during the pass when the config comes first, once

    def weights_limit(config: bytes) -> int:
        _, features, meta = configured(config)
        return _weights_limit(meta, features)

    members = _member_bytes(archive, weights_limit)
    labels, features, meta = configured(members[CONFIG_MEMBER])
    with prefixed_errors(WEIGHTS_MEMBER):
        _check_size(len(members[WEIGHTS_MEMBER]), _weights_limit(meta, features), "the model can hold")
        state = load_weights(io.BytesIO(members[WEIGHTS_MEMBER]))
    mapping = key_map(meta, state)
    absent = sorted(v for v in mapping.values() if v not in state)
    if absent:
        raise UserError(f"weights missing for the configured model, e.g. {brief_repr(absent[:3])}")
    unused = sorted(k for k in set(state) - set(mapping.values()) if not k.startswith("preprocessor."))
    if unused:
        raise UserError(f"weights the converter does not understand, e.g. {brief_repr(unused[:3])}")
    model = rebuild_checked(meta, {ours: state[theirs] for ours, theirs in mapping.items()})
    _check_filterbank(features, state)
    return model, features, labels


def convert_nemo(path: str | os.PathLike) -> tuple[QuartzNet, dict[str, Any]]:
    """Build an audiosep :class:`QuartzNet` and its ASR metadata from a ``.nemo`` archive.

    Raises:
        UserError: unreadable or ambiguous archive, oversized members, unsupported architecture, or
            weights that do not match the config; one line that names ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a .nemo file")
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        archive = tarfile.open(path, "r|*", tarinfo=_BoundedTarInfo)  # one pass: no member decompressed twice
    except UserError as err:  # the first member's header is read on opening
        raise UserError(f"{path}: {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise UserError(f"{path}: not a .nemo archive (expected a tar file, plain or compressed)") from err
    with archive:
        try:
            model, features, labels = _convert_archive(archive)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        except ARCHIVE_ERRORS as err:
            raise UserError(f"{path}: damaged .nemo archive ({one_line(err)})") from None
    return model, asr_metadata(features, labels) | {"source": f"nemo:{path.name}"}


def convert_nemo_file(path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Convert ``path`` (``.nemo``) and save an audiosep model file at ``out``."""
    model, metadata = convert_nemo(path)
    save_model(model, out, metadata)
