"""Import SpeechBrain SepFormer and RE-SepFormer checkpoints as audiosep models.

SpeechBrain stores a separator as three state dicts (``encoder.ckpt``, ``masknet.ckpt``,
``decoder.ckpt``) and describes it in ``hyperparams.yaml``. The architecture is inferred from
the tensor shapes (filterbank, widths, layer and block counts, sources); what shapes cannot
tell (heads, chunk size, which LayerNorm flavour, causality, pre/post norm) comes from
``hyperparams.yaml`` when present, else from the paper defaults, and every value can be
overridden. The YAML is read as plain data: its ``!new:``/``!apply:`` tags are never executed.

The folder is untrusted input: the YAML is read without aliases and within a size limit, every
checkpoint tensor must be contiguous, real and finite, and the model is first built on the meta
device and compared with the weights (:func:`audiosep.convert.untrusted.rebuild_checked`) before it is
built on the CPU. Every failure is a one-line :class:`ConversionError` naming the file.

Example:
    >>> model = sepformer_from_speechbrain(encoder_sd, masknet_sd, decoder_sd, num_heads=8)  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from torch import Tensor, nn

from audiosep.checkpoint import MAX_SAMPLE_RATE, is_size
from audiosep.convert.untrusted import (
    MAX_YAML_BYTES,
    UntrustedYamlLoader,
    build_on_meta,
    load_weights,
    parse_untrusted_yaml,
    prefixed_errors,
    rebuild_checked,
)
from audiosep.errors import UserError, brief_repr, one_line
from audiosep.models.resepformer import RESepFormer
from audiosep.models.sepformer import SepFormer

StateDict = Mapping[str, Tensor]
ModelKind = Literal["sepformer", "resepformer"]
CHECKPOINT_FILES = ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt")
HYPERPARAMS_FILE = "hyperparams.yaml"

# SpeechBrain select_norm names -> registry names ("ln" is GroupNorm(1, C), i.e. global LN).
SPEECHBRAIN_NORMS = {"ln": "global_ln", "gln": "global_ln", "cln": "channel_ln"}

# One SpeechBrain TransformerEncoder -> our SequenceStack (keys relative to both).
_STACK_RENAMES: list[tuple[str, str]] = [
    (r"layers\.(\d+)\.self_att\.att\.in_proj_(weight|bias)", r"layers.\1.attention.qkv.\2"),
    (r"layers\.(\d+)\.self_att\.att\.out_proj\.(weight|bias)", r"layers.\1.attention.out.\2"),
    (r"layers\.(\d+)\.pos_ffn\.ffn\.([03])\.(weight|bias)", r"layers.\1.ffn.\2.\3"),
    (r"layers\.(\d+)\.norm([12])\.norm\.(weight|bias)", r"layers.\1.norm\2.\3"),
    (r"norm\.norm\.(weight|bias)", r"norm.\1"),
]
# Masknet keys; a target of None drops the tensor (position codes are recomputed).
_SEPFORMER_RENAMES: list[tuple[str, str | None]] = [
    (r"norm\.(weight|bias)", r"masker.norm.\1"),
    (r"conv1d\.weight", r"masker.bottleneck.weight"),
    (r"dual_mdl\.(\d+)\.(intra|inter)_mdl\.mdl\.(.+)", r"masker.blocks.\1.\2.<stack:\3>"),
    (r"dual_mdl\.(\d+)\.(intra|inter)_mdl\.pos_enc\.pe", None),
    (r"dual_mdl\.(\d+)\.(intra|inter)_norm\.(weight|bias)", r"masker.blocks.\1.\2_norm.\3"),
    (r"conv2d\.(weight|bias)", r"masker.to_sources.\1"),
    (r"output\.0\.(weight|bias)", r"masker.output.\1"),
    (r"output_gate\.0\.(weight|bias)", r"masker.output_gate.\1"),
    (r"end_conv1x1\.weight", r"masker.to_masks.weight"),
    (r"prelu\.weight", r"masker.prelu.weight"),
]
_RESEPFORMER_RENAMES: list[tuple[str, str | None]] = [
    (r"model\.seg_model\.(\d+)\.mdl\.(.+)", r"masker.intra.\1.<stack:\2>"),
    (r"model\.seg_model\.(\d+)\.norm\.(weight|bias)", r"masker.intra_norms.\1.\2"),
    (r"model\.mem_model\.(\d+)\.mdl\.(.+)", r"masker.inter.\1.<stack:\2>"),
    (r"model\.mem_model\.(\d+)\.norm\.(weight|bias)", r"masker.inter_norms.\1.\2"),
    (r"model\.(seg|mem)_model\.(\d+)\.pos_enc\.pe", None),
    (r"model\.output_fc\.0\.weight", r"masker.prelu.weight"),
    (r"model\.output_fc\.1\.(weight|bias)", r"masker.to_masks.\1"),
]


class ConversionError(UserError, ValueError):
    """A SpeechBrain checkpoint that does not describe a supported model."""


def _rename_stack_key(key: str) -> str:
    for pattern, target in _STACK_RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise ConversionError(
        f"unsupported transformer tensor {brief_repr(key)} (only regularMHA encoders are supported)"
    )


def _rename(key: str, renames: list[tuple[str, str | None]]) -> str | None:
    """Our key for SpeechBrain masknet ``key``; None to drop it; raises for unknown keys."""
    for pattern, target in renames:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if target is None:
            return None
        renamed = match.expand(target)
        return re.sub(r"<stack:(.+)>", lambda m: _rename_stack_key(m.group(1)), renamed)
    raise ConversionError(
        f"unexpected masknet tensor {brief_repr(key)}: not a supported SpeechBrain separator"
    )


def _count(state: StateDict, prefix: str) -> int:
    """Number of consecutive indices ``i`` with keys starting ``prefix + f"{i}."``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return len(indices)


def _get(state: StateDict, key: str, what: str) -> Tensor:
    if key not in state:
        raise ConversionError(f"{what} checkpoint lacks {key!r}; is it a SpeechBrain SepFormer/RE-SepFormer?")
    return state[key]


def _shape(state: StateDict, key: str, what: str, ndim: int) -> tuple[int, ...]:
    """Shape of a required tensor that sizes the model: ``ndim`` dimensions, none of them empty."""
    shape = tuple(_get(state, key, what).shape)
    if len(shape) != ndim or 0 in shape:
        raise ConversionError(
            f"{what} tensor {key!r} has shape {brief_repr(shape)}; expected {ndim} non-empty dims"
        )
    return shape


def _filterbank_args(encoder_sd: StateDict, decoder_sd: StateDict) -> dict[str, int]:
    encoder = _shape(encoder_sd, "conv1d.weight", "encoder", 3)  # [N, 1, W]
    decoder = _shape(decoder_sd, "weight", "decoder", 3)  # [N, 1, W]
    if encoder[1] != 1 or encoder != decoder:
        raise ConversionError(
            f"encoder {encoder} and decoder {decoder} weights do not form a single-channel filterbank"
        )
    return {"encoder_channels": encoder[0], "kernel_size": encoder[2]}


def _layer_count(state: StateDict, stack_prefix: str) -> int:
    count = _count(state, stack_prefix + "layers.")
    if count == 0:
        raise ConversionError(f"no transformer layers under {stack_prefix!r}")
    return count


def infer_sepformer_args(
    encoder_sd: StateDict, masknet_sd: StateDict, decoder_sd: StateDict
) -> dict[str, Any]:
    """:class:`SepFormer` constructor arguments read from SpeechBrain tensor shapes."""
    _check_kind(masknet_sd, "sepformer")
    args: dict[str, Any] = _filterbank_args(encoder_sd, decoder_sd)
    model_channels = _shape(masknet_sd, "conv1d.weight", "masknet", 3)[0]
    stack = "dual_mdl.0.intra_mdl.mdl."
    args.update(
        model_channels=model_channels,
        num_sources=_shape(masknet_sd, "conv2d.weight", "masknet", 4)[0] // model_channels,
        num_blocks=_count(masknet_sd, "dual_mdl."),
        num_intra_layers=_layer_count(masknet_sd, stack),
        num_inter_layers=_layer_count(masknet_sd, "dual_mdl.0.inter_mdl.mdl."),
        ffn_dim=_shape(masknet_sd, stack + "layers.0.pos_ffn.ffn.0.weight", "masknet", 2)[0],
    )
    return args


def infer_resepformer_args(
    encoder_sd: StateDict, masknet_sd: StateDict, decoder_sd: StateDict
) -> dict[str, Any]:
    """:class:`RESepFormer` constructor arguments read from SpeechBrain tensor shapes."""
    _check_kind(masknet_sd, "resepformer")
    args: dict[str, Any] = _filterbank_args(encoder_sd, decoder_sd)
    channels = args["encoder_channels"]
    stack = "model.seg_model.0.mdl."
    num_blocks = _count(masknet_sd, "model.seg_model.")
    intra_layers = _layer_count(masknet_sd, stack)
    args.update(
        num_sources=_shape(masknet_sd, "model.output_fc.1.weight", "masknet", 3)[0] // channels,
        num_blocks=num_blocks,
        num_intra_layers=intra_layers,
        num_inter_layers=_layer_count(masknet_sd, "model.mem_model.0.mdl.")
        if num_blocks > 1
        else intra_layers,
        ffn_dim=_shape(masknet_sd, stack + "layers.0.pos_ffn.ffn.0.weight", "masknet", 2)[0],
    )
    return args


def _check_kind(masknet_sd: StateDict, expected: ModelKind) -> None:
    kind = detect_model_kind(masknet_sd)
    if kind != expected:
        raise ConversionError(f"masknet checkpoint holds a {kind}, not a {expected}")


def _build_meta(cls: type[nn.Module], args: dict[str, Any]) -> nn.Module:
    """``cls(**args)`` on the meta device: the shapes to check the weights against, allocating nothing."""
    with prefixed_errors("", ConversionError):
        return build_on_meta(cls, args)


def _fit(meta: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renamed tensors reshaped to the (meta) model's shapes: 1x1 convolutions, [C, 1] norms."""
    target = meta.state_dict()
    unexpected = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state))
    if unexpected or missing:
        raise ConversionError(
            f"checkpoint does not fit the model: missing {brief_repr(missing[:5])}, "
            f"unexpected {brief_repr(unexpected[:5])}"
        )
    for key, value in state.items():
        if value.numel() != target[key].numel():
            raise ConversionError(
                f"{key}: SpeechBrain tensor {tuple(value.shape)} vs model {tuple(target[key].shape)}; "
                "pass the architecture explicitly"
            )
    return {key: value.reshape(target[key].shape) for key, value in state.items()}


def _load(meta: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """``meta``'s model built on the CPU with ``state`` (eval mode), once the checks of a model file pass."""
    with prefixed_errors("", ConversionError):
        return rebuild_checked(meta, state)


def _converted_state(
    encoder_sd: StateDict, masknet_sd: StateDict, decoder_sd: StateDict, renames: list[tuple[str, str | None]]
) -> dict[str, Tensor]:
    for file, found, known in (("encoder.ckpt", encoder_sd, "conv1d.weight"), ("decoder.ckpt", decoder_sd, "weight")):
        extra = sorted(set(found) - {known})
        if extra:  # a Decoder(bias=True): dropping it gave outputs 0.64 off (reviewer)
            raise ConversionError(f"{file}: weights audiosep's model has no place for ({brief_repr(extra[:3])}); "
                                  "refused rather than dropped")  # fmt: skip
    state = {"encoder.weight": encoder_sd["conv1d.weight"], "decoder.weight": decoder_sd["weight"]}
    for key, value in masknet_sd.items():
        ours = _rename(key, renames)
        if ours is not None:
            state[ours] = value
    return state


# One transformer stack's key prefix in a masknet state dict, per model kind.
_STACK_PREFIXES: dict[ModelKind, str] = {
    "sepformer": r"dual_mdl\.\d+\.(?:intra|inter)_mdl\.",
    "resepformer": r"model\.(?:seg|mem)_model\.\d+\.",
}


def _check_positional_encodings(masknet_sd: StateDict, kind: ModelKind) -> None:
    """Refuse stacks saved without positional encodings: SpeechBrain stores each stack's ``pos_enc.pe`` table,
    and ours always add them (a model without them converted 0.225 off SpeechBrain's; reviewer)."""
    stacks = {match.group(0) for key in masknet_sd if (match := re.match(_STACK_PREFIXES[kind], key))}
    lacking = sorted(stack for stack in stacks if stack + "pos_enc.pe" not in masknet_sd)
    if lacking:
        raise ConversionError(
            f"masknet.ckpt: no positional encoding table ({lacking[0]}pos_enc.pe): a model built with "
            "use_positional_encoding=False, which audiosep does not implement"
        )


def _default_norm(masknet_sd: StateDict, norm_key: str, causal: bool) -> str:
    """``[C, 1]``-shaped weights are SpeechBrain's gLN; ``[C]`` is GroupNorm ("ln") or cLN."""
    if _get(masknet_sd, norm_key, "masknet").dim() > 1:
        return "global_ln"
    return "channel_ln" if causal else "global_ln"


def sepformer_from_speechbrain(
    encoder_sd: StateDict, masknet_sd: StateDict, decoder_sd: StateDict, **overrides: Any
) -> SepFormer:
    """Build a :class:`SepFormer` holding SpeechBrain SepFormer weights (eval mode).

    Args:
        encoder_sd: state dict of ``speechbrain.lobes.models.dual_path.Encoder``.
        masknet_sd: state dict of ``Dual_Path_Model`` with ``SBTransformerBlock`` intra/inter models.
        decoder_sd: state dict of ``Decoder``.
        **overrides: :class:`SepFormer` arguments replacing the inferred ones; shapes cannot tell
            ``num_heads`` (default 8), ``chunk_size`` (250), ``norm`` (``global_ln`` for
            SpeechBrain ``ln``/``gln``; pass ``channel_ln`` for ``cln``) or ``pre_norm`` (True).

    Raises:
        ConversionError: tensors of another architecture or options we do not implement.
    """
    args = infer_sepformer_args(encoder_sd, masknet_sd, decoder_sd)
    args["norm"] = _default_norm(masknet_sd, "dual_mdl.0.intra_norm.weight", causal=False)
    args["tail"] = "drop"  # SpeechBrain's handling of the samples after the last frame: its numbers at every length
    args.update(overrides)
    meta = _build_meta(SepFormer, args)
    state = _fit(meta, _converted_state(encoder_sd, masknet_sd, decoder_sd, _SEPFORMER_RENAMES))
    _check_positional_encodings(masknet_sd, "sepformer")  # the tables are dropped above: not in the model's state
    return _load(meta, state)


def resepformer_from_speechbrain(
    encoder_sd: StateDict, masknet_sd: StateDict, decoder_sd: StateDict, **overrides: Any
) -> RESepFormer:
    """Build a :class:`RESepFormer` holding SpeechBrain RE-SepFormer weights (eval mode).

    Args:
        encoder_sd: state dict of ``speechbrain.lobes.models.dual_path.Encoder``.
        masknet_sd: state dict of ``ResourceEfficientSeparator`` with
            ``SBTransformerBlock_wnormandskip`` seg/mem models and ``mem_type="av"``.
        decoder_sd: state dict of ``Decoder``.
        **overrides: :class:`RESepFormer` arguments replacing the inferred ones; shapes cannot
            tell ``num_heads`` (8), ``chunk_size`` (150), ``causal`` (False), ``pre_norm`` or
            ``norm``: SpeechBrain ``ln``/``gln`` become ``global_ln`` when not causal (pass
            ``channel_ln`` for a non-causal ``cln`` model), ``cln`` becomes ``channel_ln`` when causal.
            ``audiosep convert speechbrain`` reads all of these from ``hyperparams.yaml``.

    Raises:
        ConversionError: tensors of another architecture or options we do not implement.
    """
    args = infer_resepformer_args(encoder_sd, masknet_sd, decoder_sd)
    causal = bool(overrides.get("causal", False))
    args["norm"] = _default_norm(masknet_sd, "model.seg_model.0.norm.weight", causal)
    args["tail"] = "drop"  # as for the SepFormer
    args.update(overrides)
    meta = _build_meta(RESepFormer, args)
    state = _fit(meta, _converted_state(encoder_sd, masknet_sd, decoder_sd, _RESEPFORMER_RENAMES))
    _check_positional_encodings(masknet_sd, "resepformer")
    # SpeechBrain orders the mask channels (channel, source); ours are (source, channel).
    channels, sources = args["encoder_channels"], args["num_sources"]
    for name in ("masker.to_masks.weight", "masker.to_masks.bias"):
        tensor = state[name]
        state[name] = tensor.reshape(channels, sources, -1).transpose(0, 1).reshape(tensor.shape)
    return _load(meta, state)


def detect_model_kind(masknet_sd: StateDict) -> ModelKind:
    """``"sepformer"`` or ``"resepformer"`` from the masknet's tensor names."""
    if any(key.startswith("dual_mdl.") for key in masknet_sd):
        return "sepformer"
    if any(key.startswith("model.seg_model.") for key in masknet_sd):
        return "resepformer"
    raise ConversionError(
        "masknet.ckpt is neither a SepFormer (dual_mdl.*) nor an RE-SepFormer (model.seg_model.*)"
    )


class _TaggedLoader(UntrustedYamlLoader):
    """Loader of untrusted YAML that keeps SpeechBrain's tags as data instead of running them."""


class Ref(str):
    """A ``!ref <name>`` scalar."""


def _construct_tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {"__tag__": tag_suffix} | loader.construct_mapping(node, deep=True)  # keys of any type
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return Ref(value) if tag_suffix == "ref" else value


_TaggedLoader.add_multi_constructor("!", _construct_tagged)


def read_hyperparams(path: str | Path) -> dict[str, Any]:
    """Parse a SpeechBrain ``hyperparams.yaml`` as plain data (tags kept as ``__tag__``, never run).

    Raises:
        ConversionError: unreadable, too large or invalid YAML, or YAML with aliases.
    """
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConversionError(f"{path}: cannot read hyperparams ({one_line(err)})") from None
    with prefixed_errors(f"{path}: cannot read hyperparams", ConversionError):
        hparams = parse_untrusted_yaml(data, _TaggedLoader)
    return hparams if isinstance(hparams, dict) else {}


MAX_REF_HOPS = 10  # refs of refs a value may go through; more is taken for a cycle


def _resolve(value: Any, top: dict[str, Any], key: str) -> Any:
    """``value`` with ``!ref <name>`` followed to a top-level key (refs of refs too).

    Why an error and not None: None reads as "not stated", so an expression (``!ref <N> // 2``), a
    missing name or a cycle would silently become the paper default and the model would differ
    from SpeechBrain's.

    Raises:
        ConversionError: a ref that is an expression, names no top-level key, or goes round a cycle.
    """
    for _ in range(MAX_REF_HOPS):
        if not isinstance(value, Ref):
            return value
        match = re.fullmatch(r"\s*<(\w+)>\s*", value)
        if match is None:
            raise ConversionError(
                f"{key}: cannot resolve !ref {brief_repr(str(value))}: only '!ref <name>' is read, "
                "not expressions; write the value instead"
            )
        if match.group(1) not in top:
            raise ConversionError(f"{key}: !ref {brief_repr(str(value))} names no top-level key")
        value = top[match.group(1)]
    raise ConversionError(f"{key}: !ref goes through more than {MAX_REF_HOPS} refs (a cycle?)")


def _find_node(top: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any] | None:
    for value in top.values():
        tag = value.get("__tag__") if isinstance(value, dict) else None
        if isinstance(tag, str) and tag.endswith(class_names):
            return value
    return None


def _option(node: dict[str, Any] | None, key: str, top: dict[str, Any], default: Any) -> Any:
    """``node[key]`` resolved (:func:`_resolve`), SpeechBrain's ``default`` when absent, None without a node."""
    if node is None:
        return None
    return _resolve(node[key], top, key) if key in node else default


# Per model: the YAML nodes we read (class name suffix, or the masknet key that refers to them).
_NODES = {
    "sepformer": {"masknet": "Dual_Path_Model", "intra": "intra_model", "inter": "inter_model"},
    "resepformer": {"masknet": "ResourceEfficientSeparator", "intra": "seg_model", "inter": "mem_model"},
}
# (model kinds, node, key, SpeechBrain's default, the values we implement); others are refused. Node
# "stack" is both transformer stacks (intra and inter; seg and mem): SpeechBrain builds each from its own
# entry, and ours share one setting, so the two must agree.
_SUPPORTED_SETTINGS = [
    (("sepformer", "resepformer"), "stack", "attention_type", "regularMHA", ("regularMHA",)),
    (("sepformer", "resepformer"), "stack", "activation", "relu", ("relu",)),
    (("sepformer", "resepformer"), "stack", "use_positional_encoding", False, (True,)),
    (("sepformer",), "masknet", "linear_layer_after_inter_intra", True, (False,)),
    (("sepformer",), "masknet", "skip_around_intra", True, (True,)),
    (("sepformer",), "masknet", "use_global_pos_enc", False, (False,)),
    (("resepformer",), "masknet", "mem_type", "hc", ("av",)),
    (("resepformer",), "masknet", "nonlinear", "relu", ("relu",)),
    (("resepformer",), "stack", "use_skip", True, (True,)),
    (("resepformer",), "stack", "use_norm", True, (True,)),
]
# (our argument, node, key, SpeechBrain's default).
_ARGUMENTS = {
    "sepformer": [("chunk_size", "masknet", "K", 200), ("norm", "masknet", "norm", "ln")],
    "resepformer": [
        ("chunk_size", "masknet", "segment_size", 20),
        ("norm", "stack", "norm_type", "gln"),
        ("causal", "stack", "causal", False),
    ],
}
_STACK_ARGUMENTS = [("num_heads", "stack", "nhead", None), ("pre_norm", "stack", "norm_before", False)]
# The type each argument read from the YAML must have (``type(value) is``: no bool for an int).
_ARGUMENT_TYPES = {"chunk_size": int, "norm": str, "causal": bool, "num_heads": int, "pre_norm": bool}


def _yaml_nodes(hparams: dict[str, Any], kind: ModelKind) -> dict[str, dict[str, Any] | None]:
    names = _NODES[kind]
    masknet = _find_node(hparams, (names["masknet"],))
    nodes = {"masknet": masknet}
    for part in ("intra", "inter"):
        node = _option(masknet, names[part], hparams, None)
        nodes[part] = node if isinstance(node, dict) else None
    return nodes


def missing_yaml_nodes(hparams: dict[str, Any], kind: ModelKind) -> list[str]:
    """The nodes of ``kind`` (masknet, intra and inter stacks) that ``hparams`` does not hold: their settings
    are SpeechBrain's defaults, not this model's, so the caller warns."""
    names = _NODES[kind]
    nodes = _yaml_nodes(hparams, kind)
    return [names[part] for part in ("masknet", "intra", "inter") if nodes[part] is None]


def _setting(nodes: dict[str, dict[str, Any] | None], node: str, key: str, top: dict[str, Any], default: Any) -> Any:
    """``key`` of ``node``; of "stack", the value both stacks state (None where neither node is there).

    Raises:
        ConversionError: the intra and inter stacks state different values (ours share one).
    """
    if node != "stack":
        return _option(nodes[node], key, top, default)
    intra, inter = (_option(nodes[part], key, top, default) for part in ("intra", "inter"))
    if None not in (intra, inter) and intra != inter:
        raise ConversionError(
            f"unsupported SpeechBrain setting: intra {key}={brief_repr(intra)}, inter {key}={brief_repr(inter)}"
        )
    return inter if intra is None else intra


def hyperparams_overrides(hparams: dict[str, Any], kind: ModelKind) -> dict[str, Any]:
    """Constructor arguments that ``hyperparams.yaml`` states and tensor shapes cannot show.

    Keys absent from a node take SpeechBrain's constructor defaults (e.g. ``norm_before=False``).

    Raises:
        ConversionError: a setting we do not implement (extra linear layers, no skip around
            intra, global positional encoding, attention other than regularMHA, ...), or a
            ``!ref`` that cannot be resolved (:func:`_resolve`).
    """
    nodes = _yaml_nodes(hparams, kind)
    for kinds, node, key, default, supported in _SUPPORTED_SETTINGS:
        value = _setting(nodes, node, key, hparams, default) if kind in kinds else None
        if value is not None and value not in supported:
            raise ConversionError(
                f"unsupported SpeechBrain setting {key}={brief_repr(value)} (supported: {supported})"
            )
    kernel = _option(_find_node(hparams, ("dual_path.Encoder",)), "kernel_size", hparams, 2)
    stride = _option(_find_node(hparams, ("dual_path.Decoder",)), "stride", hparams, 1)
    numbers = all(isinstance(value, int | float) for value in (kernel, stride))
    if kernel is not None and stride is not None and (not numbers or stride != kernel // 2):
        raise ConversionError(
            f"unsupported SpeechBrain setting: decoder stride {brief_repr(stride)} "
            f"!= kernel {brief_repr(kernel)} / 2"
        )
    overrides = {
        arg: _setting(nodes, node, key, hparams, default)
        for arg, node, key, default in (*_ARGUMENTS[kind], *_STACK_ARGUMENTS)
    }
    for arg, value in overrides.items():
        if value is not None and type(value) is not _ARGUMENT_TYPES[arg]:
            raise ConversionError(
                f"SpeechBrain setting for {arg} is {brief_repr(value)}, not of type {_ARGUMENT_TYPES[arg].__name__}"
            )
    if overrides["norm"] is not None:
        if overrides["norm"] not in SPEECHBRAIN_NORMS:
            raise ConversionError(f"unsupported SpeechBrain norm {brief_repr(overrides['norm'])}")
        overrides["norm"] = SPEECHBRAIN_NORMS[overrides["norm"]]
    return {key: value for key, value in overrides.items() if value is not None}


def _load_state(path: Path) -> dict[str, Tensor]:
    """A checkpoint's state dict: str names -> contiguous, finite CPU tensors (no fake sizes)."""
    with prefixed_errors(str(path), ConversionError):
        return load_weights(path)


def convert_speechbrain_folder(
    folder: str | Path, kind: ModelKind | Literal["auto"] = "auto", sample_rate: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a downloaded SpeechBrain SepFormer / RE-SepFormer folder: ``(model, metadata)``.

    Args:
        folder: holds ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt`` and optionally
            ``hyperparams.yaml`` (read as data).
        kind: ``"sepformer"``, ``"resepformer"`` or ``"auto"`` (from the masknet's tensor names).
        sample_rate: overrides the YAML's ``sample_rate``.

    Returns:
        The model in eval mode and ``{"sample_rate": ...}``.

    Raises:
        ConversionError: missing or unreadable files, unknown architecture, or no sample rate anywhere;
            one line that names the file (or the folder, for weights that do not fit each other).
    """
    folder = Path(folder)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise ConversionError(f"{folder}: missing {', '.join(missing)} (expected a SpeechBrain model folder)")
    encoder_sd, masknet_sd, decoder_sd = (_load_state(folder / name) for name in CHECKPOINT_FILES)
    yaml_path = folder / HYPERPARAMS_FILE
    hparams = read_hyperparams(yaml_path) if yaml_path.is_file() else {}
    with prefixed_errors(str(folder), ConversionError):
        kind = detect_model_kind(masknet_sd) if kind == "auto" else kind
    with prefixed_errors(str(yaml_path), ConversionError):
        missing = missing_yaml_nodes(hparams, kind)
    if missing:  # the heads and the chunk size are in no weight's shape
        where = f"no {HYPERPARAMS_FILE}" if not yaml_path.is_file() else f"{HYPERPARAMS_FILE} has no {', '.join(missing)} entry"
        warnings.warn(f"{folder}: {where}: the number of heads, the chunk size and the norm placement "
                      "are SpeechBrain's pretrained defaults, not read from this model; copy its hyperparams.yaml "
                      "into the folder if they differ", stacklevel=2)  # fmt: skip
    with prefixed_errors(str(yaml_path), ConversionError):
        overrides = hyperparams_overrides(hparams, kind)
    if sample_rate is None:
        with prefixed_errors(str(yaml_path), ConversionError):
            sample_rate = _resolve(hparams.get("sample_rate"), hparams, "sample_rate")
    if not (is_size(sample_rate) and sample_rate <= MAX_SAMPLE_RATE):  # the rule checkpoint metadata obeys
        raise ConversionError(
            f"{folder}: no sample_rate in 1..{MAX_SAMPLE_RATE} in hyperparams.yaml "
            f"(got {brief_repr(sample_rate)}); pass it explicitly"
        )
    convert = sepformer_from_speechbrain if kind == "sepformer" else resepformer_from_speechbrain
    with prefixed_errors(str(folder), ConversionError):
        return convert(encoder_sd, masknet_sd, decoder_sd, **overrides), {"sample_rate": sample_rate}
