"""Checkpoint loading is safe: only registered model classes are rebuilt, from checked args and weights."""

from __future__ import annotations

import importlib
import math
import struct
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from audiosep.checkpoint import (
    FORMAT,
    INT_SLACK,
    LIGHTNING_KEY,
    MAX_VALUES,
    CheckpointError,
    load_model,
    model_record,
    pickle_problem,
    read_record,
    save_model,
)
from audiosep.cli import main
from audiosep.data.tokenizer import CharTokenizer
from audiosep.models.conv_tasnet import ConvTasNet
from audiosep.models.quartznet import QuartzNet
from audiosep.models.registry import MODEL_CLASSES
from audiosep.nn.features import LogMelFeatures
from audiosep.tasks.asr import ASRTask
from audiosep.transcriber import Transcriber

CONV_TASNET = "audiosep.models.conv_tasnet.ConvTasNet"
TINY: dict[str, dict[str, Any]] = {
    CONV_TASNET: dict(
        enc_num_filters=16, enc_kernel_size=8, bottleneck_channels=8, hidden_channels=12, skip_channels=6,
        num_layers=2, num_repeats=1,
    ),
    "audiosep.models.sepformer.SepFormer": dict(
        encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=1, num_intra_layers=1,
        num_inter_layers=1, num_heads=2, ffn_dim=24, chunk_size=10,
    ),
    "audiosep.models.resepformer.RESepFormer": dict(
        encoder_channels=12, kernel_size=8, num_blocks=2, num_intra_layers=1, num_inter_layers=1,
        num_heads=2, ffn_dim=24, chunk_size=6,
    ),
    "audiosep.models.tiny_sepformer.TinySepformer": dict(
        encoder_channels=16, kernel_size=8, model_channels=12, num_blocks=1, num_intra_layers=1,
        num_inter_layers=1, num_heads=2, attention_channels=8, conv_kernel_size=3, ffn_dim=24, chunk_size=10,
    ),
    "audiosep.models.quartznet.QuartzNet": dict(
        in_features=8, num_classes=29, blocks=[[4, 3, 1, 2, 1, False], [6, 5, 2], [6, 1, 1, 1, 1, False, False]]
    ),
}  # fmt: skip
QUARTZNET_FEATURES = {"n_mels": 8, "n_fft": 512}


def randomized(model: nn.Module) -> nn.Module:
    """``model`` with every float parameter and buffer redrawn, so that no default init can pass as loaded."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model.eval()


def tiny_conv_tasnet() -> ConvTasNet:
    return randomized(ConvTasNet(**TINY[CONV_TASNET]))


def record(**changes: Any) -> dict[str, Any]:
    """A valid record of the tiny Conv-TasNet, with top-level keys replaced by ``changes``."""
    return model_record(tiny_conv_tasnet(), {"sample_rate": 8000}) | changes


def with_args(**changes: Any) -> dict[str, Any]:
    """The tiny Conv-TasNet record with some init args changed (weights unchanged)."""
    base = record()
    return base | {"init_args": base["init_args"] | changes}


def write(tmp_path: Path, obj: Any, name: str = "crafted.ckpt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def load_error(path: Path) -> str:
    """The message of the CheckpointError that loading ``path`` raises; checks it is one line naming the file."""
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message
    return message


def cpu_tensor_registrations() -> tuple[list[str], Any]:
    """A list that collects the device of every parameter/buffer registered on a real device, and its hook."""
    seen: list[str] = []

    def hook(_module: nn.Module, _name: str, tensor: Tensor | None) -> None:
        if tensor is not None and tensor.device.type != "meta":
            seen.append(tensor.device.type)

    return seen, hook


def error_before_any_build(path: Path) -> str:
    """The one-line load error of ``path``; checks that no parameter or buffer was made on a real device first."""
    seen, hook = cpu_tensor_registrations()
    handles = [
        nn_module.register_module_parameter_registration_hook(hook),
        nn_module.register_module_buffer_registration_hook(hook),
    ]
    try:
        message = load_error(path)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [], "the model was built on a real device"
    return message


def shared_lists(width: int, depth: int) -> Any:
    """``width`` references to a list of ``width`` references to ... ``depth`` deep: ``width**depth`` zeros, a tiny pickle."""
    value: Any = 0
    for _ in range(depth):
        value = [value] * width
    return value


def nested_lists(depth: int) -> list[Any]:
    """``[[[...[]...]]]``, ``depth`` deep."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def write_deep(tmp_path: Path, obj: Any) -> Path:
    """``write`` for an object nested deeper than the recursion limit (the pickler recurses, the loader does not)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(4 * limit)
    try:
        return write(tmp_path, obj)
    finally:
        sys.setrecursionlimit(limit)


# --- round trips ------------------------------------------------------------------------------------


def test_every_registered_class_has_a_tiny_config() -> None:
    assert set(TINY) == set(MODEL_CLASSES)


@pytest.mark.parametrize("class_path", sorted(TINY))
def test_every_registered_model_round_trips(class_path: str, tmp_path: Path) -> None:
    model = randomized(MODEL_CLASSES[class_path](**TINY[class_path]))
    save_model(model, tmp_path / "m.pt", {"sample_rate": 8000})
    loaded, metadata = load_model(tmp_path / "m.pt")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.init_args == model.init_args and metadata == {"sample_rate": 8000}
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    torch.manual_seed(2)
    inputs = (torch.randn(1, 8, 20), torch.tensor([20])) if class_path.endswith("QuartzNet") else (torch.randn(1, 400),)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs))


def test_loading_imports_nothing_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, record(), "ok.pt")
    crafted = write(tmp_path, record(class_path="audiosep.io.atomic_write_text"))

    def refuse(name: str, *args: Any) -> None:
        raise AssertionError(f"the loader imported {name}")

    monkeypatch.setattr(importlib, "import_module", refuse)
    assert isinstance(load_model(path)[0], ConvTasNet)
    load_error(crafted)


# --- records that name something other than a registered model class ------------------------------


@pytest.mark.parametrize(
    ("class_path", "init_args"),
    [
        ("audiosep.io.atomic_write_text", {"path": "{target}", "text": "pwned"}),
        ("audiosep.data.audio.write_audio_atomic", {"path": "{target}", "audio": [0.0] * 80, "sample_rate": 8000}),
        ("os.system", {"command": "touch {target}"}),
        ("builtins.exec", {"source": "open('{target}', 'w').close()"}),
    ],
)  # fmt: skip
def test_a_record_naming_a_function_that_writes_a_file_runs_nothing(
    class_path: str, init_args: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "pwned.wav"
    args = {k: v.format(target=target) if isinstance(v, str) else v for k, v in init_args.items()}
    path = write(tmp_path, record(class_path=class_path, init_args=args, state_dict={}))
    assert "is not an audiosep model class" in load_error(path)
    assert not target.exists()


@pytest.mark.parametrize(
    ("class_path", "init_args", "state_dict"),
    [
        ("audiosep.checkpoint.CheckpointError", {}, {}),
        ("audiosep.models.base.RebuildableModule", {}, {}),
        ("builtins.eval", {"source": "1"}, {}),
        ("torch.nn.Linear", {"in_features": 2, "out_features": 2}, nn.Linear(2, 2).state_dict()),
        ("torch.nn.modules.linear.Linear", {"in_features": 2, "out_features": 2}, nn.Linear(2, 2).state_dict()),
        ("torchaudio.models.ConvTasNet", {"num_sources": 2}, {}),
        ("audiosep.models.conv_tasnet.conv_tasnet_base", {}, {}),
        ("audiosep.models.conv_tasnet.ConvTasNet.__init__", {}, {}),
        ("audiosep.models.conv_tasnet.NoSuchModel", {}, {}),
        ("", {}, {}),
    ],
)  # fmt: skip
def test_a_record_naming_a_non_model_or_foreign_class_is_refused(
    class_path: str, init_args: dict[str, Any], state_dict: dict[str, Tensor], tmp_path: Path
) -> None:
    path = write(tmp_path, record(class_path=class_path, init_args=init_args, state_dict=dict(state_dict)))
    assert "is not an audiosep model class" in load_error(path)


# --- malformed records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({"weights": torch.zeros(2)}, "no audiosep model inside"),
        ({LIGHTNING_KEY: [1]}, "audiosep_model is a list"),
        ({"format": "audiosep.model/0"}, "no audiosep model inside"),
    ],
)
def test_a_file_without_a_record_dict_is_refused(obj: Any, problem: str, tmp_path: Path) -> None:
    assert problem in load_error(write(tmp_path, obj))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"class_path": 7}, "class_path 7 is not a str"),
        ({"init_args": [1, 2]}, "init_args is a list, not a dict"),
        ({"init_args": {1: 2}}, "init_args has a non-str key"),
        ({"init_args": {"num_layers": torch.tensor(2)}}, "init_args['num_layers'] is not a plain value"),
        ({"init_args": {"norm": {"nested": [[[[[[[[["deep"]]]]]]]]]}}}, "is not a plain value"),
        ({"state_dict": [torch.zeros(1)]}, "state_dict is a list"),
        ({"state_dict": {"encoder.weight": [0.0]}}, "not a str -> Tensor pair"),
        ({"metadata": "8000"}, "metadata is a str"),
        ({"metadata": {"sample_rate": "8000"}}, "sample_rate '8000'"),
        ({"metadata": {"sample_rate": 10**9}}, "sample_rate 1000000000"),
    ],
)  # fmt: skip
def test_a_malformed_record_is_a_one_line_error(changes: dict[str, Any], problem: str, tmp_path: Path) -> None:
    assert problem in load_error(write(tmp_path, record(**changes)))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"nrom": "gLN"}, "takes no init args ['nrom']"),
        ({"hidden_channels": 12.0}, "hidden_channels=12.0 does not fit"),
        ({"hidden_channels": "12"}, "hidden_channels='12' does not fit"),
        ({"hidden_channels": 0}, "hidden_channels=0 does not fit"),
        ({"num_layers": -2}, "num_layers=-2 does not fit"),
        ({"num_layers": True}, "num_layers=True does not fit"),
        ({"causal": 1}, "causal=1 does not fit bool"),
        ({"norm": 5}, "norm=5 does not fit"),
        ({"norm": "no_such_norm"}, "norm='no_such_norm' does not fit"),
        ({"enc_kernel_size": 1}, "cannot build ConvTasNet: enc_kernel_size must be >= 2"),
    ],
)
def test_bad_init_args_are_a_one_line_error(changes: dict[str, Any], problem: str, tmp_path: Path) -> None:
    assert problem in load_error(write(tmp_path, with_args(**changes)))


def test_the_constructor_value_error_of_a_quartznet_block_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = QuartzNet(**TINY["audiosep.models.quartznet.QuartzNet"])
    bad = model_record(model)
    bad["init_args"]["blocks"] = [[4, 3, 1, 2, 2, False]]  # strides and dilates
    assert "cannot build QuartzNet: a block may stride or dilate, not both" in load_error(write(tmp_path, bad))


def quartznet_record(**changes: Any) -> dict[str, Any]:
    """A valid record of the tiny QuartzNet, with init args replaced by ``changes``."""
    base = model_record(QuartzNet(**TINY["audiosep.models.quartznet.QuartzNet"]))
    return base | {"init_args": base["init_args"] | changes}


@pytest.mark.parametrize("dilation", [10**12, 1e12, "1000000000000", " 1_000_000_000_000 ", float("inf"), "nan"])
def test_a_size_inside_a_block_list_is_bounded_in_every_numeric_spelling(dilation: Any, tmp_path: Path) -> None:
    """QuartzNet coerces block fields with int(): 1e12 and "1000000000000" are the int 10**12 to it."""
    blocks = [[4, 3, 1, 2, 1, False], [6, 5, 2, 1, dilation], [6, 1, 1, 1, 1, False, False]]
    message = error_before_any_build(write(tmp_path, quartznet_record(blocks=blocks)))
    assert "init arg blocks=" in message
    assert "larger than the stored weights allow" in message or "holds NaN or infinity" in message


@pytest.mark.parametrize(
    ("class_path", "changes", "problem"),
    [
        ("audiosep.models.sepformer.SepFormer", {"dropout": math.nan}, "SepFormer init arg dropout=nan holds NaN or infinity"),
        ("audiosep.models.sepformer.SepFormer", {"dropout": math.inf}, "dropout=inf holds NaN or infinity"),
        ("audiosep.models.sepformer.SepFormer", {"dropout": 1.0}, "dropout=1.0 is not in [0, 1)"),
        ("audiosep.models.resepformer.RESepFormer", {"dropout": -0.1}, "dropout=-0.1 is not in [0, 1)"),
        ("audiosep.models.quartznet.QuartzNet", {"dropout": math.nan}, "QuartzNet init arg dropout=nan"),
        ("audiosep.models.quartznet.QuartzNet", {"norm_eps": math.nan}, "norm_eps=nan holds NaN or infinity"),
        ("audiosep.models.quartznet.QuartzNet", {"norm_eps": -5.0}, "norm_eps=-5.0 is not in (0, 0.1]"),
        ("audiosep.models.quartznet.QuartzNet", {"norm_eps": 0}, "norm_eps=0 is not in (0, 0.1]"),
        ("audiosep.models.quartznet.QuartzNet", {"blocks": [[4, 3, 1, 2, 1, False, True, math.nan]]}, "holds NaN"),
    ],
)
def test_non_finite_or_out_of_range_float_args_are_refused_before_any_build(
    class_path: str, changes: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    """nn.Dropout takes NaN, BatchNorm takes eps=-5 until it runs: the file must fail at load, in one line."""
    base = model_record(MODEL_CLASSES[class_path](**TINY[class_path]))
    path = write(tmp_path, base | {"init_args": base["init_args"] | changes})
    assert problem in error_before_any_build(path)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_weight_is_refused(value: float, tmp_path: Path) -> None:
    bad = record()
    bad["state_dict"]["decoder.weight"][0, 0, 0] = value
    assert "state_dict entry 'decoder.weight' holds NaN or infinite values" in error_before_any_build(
        write(tmp_path, bad)
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_channels": 10**12},
        {"num_layers": 10**9},  # a per-layer width list of 10**9 entries would be built before any module
        {"enc_num_filters": 10**6, "hidden_channels": 10**6},
        {"hidden_channels": "cap", "bottleneck_channels": "cap"},  # passes the count cap: the meta build fails
    ],
)
def test_a_huge_model_with_small_weights_fails_fast_without_allocating(
    changes: dict[str, Any], tmp_path: Path
) -> None:
    cap = sum(t.numel() for t in record()["state_dict"].values()) + INT_SLACK
    path = write(tmp_path, with_args(**{k: cap if v == "cap" else v for k, v in changes.items()}))
    start = time.perf_counter()
    message = error_before_any_build(path)
    elapsed = time.perf_counter() - start
    assert "larger than the stored weights allow" in message or "state_dict shapes do not fit" in message
    assert elapsed < 0.5, f"took {elapsed:.2f} s"


@pytest.mark.parametrize(
    ("class_path", "counts"),
    [
        (CONV_TASNET, {"num_layers": 100, "num_repeats": 100}),  # hidden_channels: a list of X * R widths
        ("audiosep.models.tiny_sepformer.TinySepformer", {"num_blocks": 200, "num_intra_layers": 60}),
    ],
)
def test_counts_that_multiply_are_bounded_by_the_stored_weights_too(
    class_path: str, counts: dict[str, int], tmp_path: Path
) -> None:
    base = model_record(MODEL_CLASSES[class_path](**TINY[class_path]))
    cap = sum(t.numel() for t in base["state_dict"].values()) + INT_SLACK
    assert max(counts.values()) <= cap < math.prod(counts.values())  # each count alone passes
    path = write(tmp_path, base | {"init_args": base["init_args"] | counts})
    assert "multiply to more than the stored weights allow" in error_before_any_build(path)


# --- weights that claim more values than the file stores -------------------------------------------


def expanded_record(hidden: int) -> dict[str, Any]:
    """The record of a Conv-TasNet ``hidden`` channels wide whose weights are each one stored zero, expanded."""
    with torch.device("meta"):
        model = ConvTasNet(**TINY[CONV_TASNET] | dict.fromkeys(("bottleneck_channels", "hidden_channels",
                                                                  "skip_channels"), hidden))  # fmt: skip
    weights = {name: torch.zeros(1).expand(tensor.shape) for name, tensor in model.state_dict().items()}
    return record(init_args=model.init_args, state_dict=weights)


def test_an_expanded_weight_is_refused_before_any_build(tmp_path: Path) -> None:
    path = write(tmp_path, expanded_record(hidden=1000))  # 6 M values claimed, a few stored
    assert path.stat().st_size < 20_000
    message = error_before_any_build(path)
    assert "state_dict entry 'encoder.weight' claims 128 values but its storage holds 1" in message


@pytest.mark.filterwarnings("ignore::UserWarning")  # nested tensors are a prototype; sparse loads warn
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(lambda w: torch.zeros(1).expand(w.shape), "claims 128 values but its storage holds 1", id="expanded"),
        pytest.param(lambda w: w.to("meta"), "is on the meta device, not the CPU", id="meta"),
        pytest.param(lambda w: w.to_sparse(), "is a torch.sparse_coo tensor, not a dense one", id="sparse"),
        pytest.param(lambda w: torch.nested.nested_tensor([w]), "is a nested tensor", id="nested"),
        pytest.param(lambda w: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8), "is a quantized tensor", id="quantized"),
        pytest.param(lambda w: w.to(torch.complex64), "has the complex dtype torch.complex64", id="complex"),
    ],
)  # fmt: skip
def test_a_weight_that_is_not_a_dense_real_cpu_tensor_is_refused_before_any_build(
    change: Any, problem: str, tmp_path: Path
) -> None:
    base = record()
    weights = base["state_dict"] | {"encoder.weight": change(base["state_dict"]["encoder.weight"])}
    path = write(tmp_path, base | {"state_dict": weights})
    assert f"state_dict entry 'encoder.weight' {problem}" in error_before_any_build(path)


def test_a_transposed_weight_holds_its_values_and_loads(tmp_path: Path) -> None:
    """A non-contiguous view is no bomb: only weights that claim more values than they store are refused."""
    base = record()
    weight = base["state_dict"]["encoder.weight"]
    transposed = weight.transpose(0, 2).contiguous().transpose(0, 2)
    assert not transposed.is_contiguous()
    path = write(tmp_path, base | {"state_dict": base["state_dict"] | {"encoder.weight": transposed}})
    model, _ = load_model(path)
    assert torch.equal(model.state_dict()["encoder.weight"], weight)


def test_weights_that_share_one_storage_count_its_values_once(tmp_path: Path) -> None:
    base = record()
    weights = base["state_dict"]
    shared = torch.zeros(max(t.numel() for t in weights.values()))
    views = {name: shared[: t.numel()].view(t.shape) for name, t in weights.items()}  # contiguous, offset 0
    cap = shared.numel() + INT_SLACK
    hidden = sum(t.numel() for t in weights.values()) + INT_SLACK  # the cap if each view counted in full
    path = write(tmp_path, base | {"state_dict": views, "init_args": base["init_args"] | {"hidden_channels": hidden}})
    assert f"hidden_channels={hidden} is larger than the stored weights allow ({cap})" in error_before_any_build(path)


# --- values that take long to walk or to print ------------------------------------------------------


@pytest.mark.parametrize(
    ("class_path", "shown"),
    [
        (shared_lists(10, 5), "class_path [[[[...], [...], [...], [...], [...], ...], [[...],"),
        (OrderedDict(a=shared_lists(10, 5)), "class_path <OrderedDict> is not a str"),
    ],
    ids=["shared-lists", "ordered-dict"],
)
def test_a_class_path_is_shown_in_a_bounded_form(class_path: Any, shown: str, tmp_path: Path) -> None:
    """The message shows a few items of a few levels, never the whole value (10**5 items here, a tiny file)."""
    path = write(tmp_path, record(class_path=class_path))
    message = load_error(path)
    assert shown in message and len(message) < 400


def test_a_class_path_or_format_nested_past_the_recursion_limit_is_a_one_line_error(tmp_path: Path) -> None:
    deep = nested_lists(sys.getrecursionlimit() + 100)
    assert "class_path [[[[...]]]] is not a str" in load_error(write_deep(tmp_path, record(class_path=deep)))
    lightning = {LIGHTNING_KEY: record(format=deep)}
    assert "format [[[[...]]]] is not 'audiosep.model/1'" in load_error(write_deep(tmp_path, lightning))


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("init_args", {"hidden_channels": shared_lists(20, 4)}),  # 160,000 values in a few hundred bytes
        ("metadata", {"junk": shared_lists(20, 4)}),
    ],
)
def test_init_args_or_metadata_of_too_many_values_are_refused(
    field: str, changes: dict[str, Any], tmp_path: Path
) -> None:
    base = record()
    path = write(tmp_path, base | {field: base[field] | changes})
    assert f"{field} holds more than {MAX_VALUES} values" in load_error(path)


def test_metadata_of_max_values_loads_and_one_more_is_refused(tmp_path: Path) -> None:
    fits = {"sample_rate": 8000, "notes": [0] * (MAX_VALUES - 2)}  # the dict's values, the list and its items
    assert load_model(write(tmp_path, record(metadata=fits), "ok.pt"))[1] == fits
    too_many = fits | {"notes": [0] * (MAX_VALUES - 1)}
    assert f"metadata holds more than {MAX_VALUES} values" in load_error(write(tmp_path, record(metadata=too_many)))


def test_the_real_build_follows_a_matching_meta_build(tmp_path: Path) -> None:
    seen, hook = cpu_tensor_registrations()
    handle = nn_module.register_module_parameter_registration_hook(hook)
    try:
        load_model(write(tmp_path, record(), "ok.pt"))
    finally:
        handle.remove()
    assert seen and set(seen) == {"cpu"}  # the control for the test above: a good file is built on the CPU


def test_state_dict_keys_and_shapes_must_match_the_constructor(tmp_path: Path) -> None:
    base = record()
    weights = base["state_dict"]
    missing = {k: v for k, v in weights.items() if k != "encoder.weight"}
    extra = weights | {"encoder.extra": torch.zeros(1)}
    reshaped = weights | {"encoder.weight": torch.zeros(32, 1, 8)}
    assert "missing ['encoder.weight']" in load_error(write(tmp_path, base | {"state_dict": missing}, "a"))
    assert "unexpected ['encoder.extra']" in load_error(write(tmp_path, base | {"state_dict": extra}, "b"))
    assert "encoder.weight (32, 1, 8) != (16, 1, 8)" in load_error(write(tmp_path, base | {"state_dict": reshaped}, "c"))
    other_size = with_args(hidden_channels=16)  # args of a bigger model, weights of the tiny one
    assert "state_dict shapes do not fit" in load_error(write(tmp_path, other_size, "d"))


def test_missing_file_and_garbage_are_one_line_errors(tmp_path: Path) -> None:
    assert "checkpoint not found" in load_error(tmp_path / "nope.ckpt")
    assert f"{tmp_path}: is a folder, not a checkpoint file" in load_error(tmp_path)  # said "not found" (reviewer)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    assert "not a readable checkpoint" in load_error(garbage)


def repacked(path: Path, compression: int) -> Path:
    """``path`` (a torch.save zip) with every entry rewritten with ``compression``."""
    out = path.with_name(f"{path.stem}.{compression}{path.suffix}")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out


def test_a_stored_repack_loads(tmp_path: Path) -> None:
    """The zip check reads what zipfile writes as torch.save does: entries stored uncompressed."""
    assert isinstance(load_model(repacked(write(tmp_path, record()), zipfile.ZIP_STORED))[0], ConvTasNet)


@pytest.mark.parametrize(("compression", "method"), [(zipfile.ZIP_DEFLATED, "deflate"), (zipfile.ZIP_LZMA, "lzma")])
def test_a_compressed_checkpoint_is_refused_before_torch_load(
    compression: int, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deflated entry of zeros expands ~1000x in torch.load: a 1 MB file held 1 GB before any check."""
    bomb = record(state_dict=record()["state_dict"] | {"zeros": torch.zeros(1 << 18)})  # 1 MB, deflates to ~1 KB
    path = repacked(write(tmp_path, bomb), compression)
    assert path.stat().st_size < 64 << 10
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load ran"))
    assert f"is compressed with {method}; torch.save writes entries uncompressed" in load_error(path)


def test_a_legacy_format_checkpoint_is_refused(tmp_path: Path) -> None:
    """The legacy format's pickle states storage sizes that torch.load allocates before reading any data."""
    path = tmp_path / "legacy.pt"
    torch.save(record(), path, _use_new_zipfile_serialization=False)
    assert "not a readable checkpoint (not a zip file, as torch.save writes)" in load_error(path)


def test_a_zip_entry_declaring_more_bytes_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    data = bytearray(write(tmp_path, record()).read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central directory entry: sizes at +20 and +24
    data[entry + 20 : entry + 28] = struct.pack("<II", 1 << 31, 1 << 31)
    path = tmp_path / "sizes.pt"
    path.write_bytes(bytes(data))
    assert "declares 2147483648 bytes, more than the" in load_error(path)


def test_a_damaged_zip_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(write(tmp_path, record()).read_bytes()[:200])  # the zip directory is cut off
    assert "not a readable checkpoint (a damaged zip file" in load_error(path)


# --- Lightning checkpoints --------------------------------------------------------------------------


def lightning_checkpoint(model: nn.Module, inner_weights: bool) -> dict[str, Any]:
    """A Lightning-shaped checkpoint of a task holding ``model`` as ``self.model`` (and one other module)."""
    weights = {f"model.{k}": v for k, v in model.state_dict().items()} | {"features.window": torch.ones(4)}
    return {
        "epoch": 0,
        "global_step": 2,
        "state_dict": weights,
        "optimizer_states": [{"state": {}, "param_groups": []}],
        LIGHTNING_KEY: model_record(model, {"sample_rate": 8000}, with_weights=inner_weights),
    }


@pytest.mark.parametrize("inner_weights", [False, True])
def test_lightning_checkpoint_loads_with_and_without_the_inner_state_dict(inner_weights: bool, tmp_path: Path) -> None:
    model = tiny_conv_tasnet()
    path = write(tmp_path, lightning_checkpoint(model, inner_weights), "last.ckpt")
    loaded, metadata = load_model(path)
    assert metadata == {"sample_rate": 8000}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_an_old_lightning_checkpoint_takes_the_weights_of_its_record(tmp_path: Path) -> None:
    model = tiny_conv_tasnet()
    checkpoint = lightning_checkpoint(model, inner_weights=True)
    checkpoint["state_dict"] = {"features.window": torch.ones(4)}  # no model.* entries outside the record
    loaded, _ = load_model(write(tmp_path, checkpoint, "old.ckpt"))
    torch.testing.assert_close(loaded.state_dict()["encoder.weight"], model.state_dict()["encoder.weight"])


def test_a_lightning_checkpoint_without_model_weights_is_refused(tmp_path: Path) -> None:
    checkpoint = lightning_checkpoint(tiny_conv_tasnet(), inner_weights=False)
    no_state = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    assert "without a state_dict" in load_error(write(tmp_path, no_state, "a.ckpt"))
    checkpoint["state_dict"] = {"features.window": torch.ones(4)}
    assert "missing" in load_error(write(tmp_path, checkpoint, "b.ckpt"))


def test_the_record_of_a_lightning_checkpoint_is_checked_too(tmp_path: Path) -> None:
    checkpoint = lightning_checkpoint(tiny_conv_tasnet(), inner_weights=False)
    checkpoint[LIGHTNING_KEY]["class_path"] = "audiosep.io.atomic_write_text"
    assert "is not an audiosep model class" in load_error(write(tmp_path, checkpoint, "last.ckpt"))


def tensors_under(value: Any, path: str = "") -> dict[str, Tensor]:
    """Every tensor in a nested checkpoint, by its path of keys."""
    if isinstance(value, Tensor):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    return {k: t for key, item in items for k, t in tensors_under(item, f"{path}/{key}").items()}


def test_a_fit_checkpoint_holds_each_weight_once(tiny_librimix: Path, tmp_path: Path) -> None:
    argv = [
        "fit", "--config", "recipes/demo/convtasnet_tiny.yaml", f"--data.root={tiny_librimix}",
        "--data.segment=0.25", "--data.batch_size=2", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        *(f"--model.model.init_args.{k}={v}" for k, v in TINY[CONV_TASNET].items()),
    ]  # fmt: skip
    assert main(argv) == 0
    path = sorted(tmp_path.rglob("last.ckpt"))[0]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "state_dict" not in raw[LIGHTNING_KEY] and raw[LIGHTNING_KEY]["format"] == FORMAT
    model, metadata = load_model(path)
    tensors = tensors_under(raw)
    outside = [  # scalars aside (e.g. the checkpoint callback's best score), and the RNG states for resume
        k for k, t in tensors.items()
        if t.numel() > 1 and not k.startswith(("/state_dict/", "/optimizer_states/", "/audiosep_rng_states/"))
    ]
    assert outside == []
    stored = sum(t.numel() for k, t in tensors.items() if k.startswith("/state_dict/model."))
    assert stored == sum(t.numel() for t in model.state_dict().values())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, raw["state_dict"][f"model.{name}"], rtol=0, atol=0)
    assert metadata == {"sample_rate": 8000} and read_record(path)["init_args"] == model.init_args


def test_asr_task_checkpoint_record_has_no_weights() -> None:
    model = QuartzNet(**TINY["audiosep.models.quartznet.QuartzNet"])
    task = ASRTask(model, features=LogMelFeatures(**QUARTZNET_FEATURES))
    checkpoint: dict[str, Any] = {}
    task.on_save_checkpoint(checkpoint)
    resume_keys = {"audiosep_rng_states", "audiosep_nonfinite_steps", "audiosep_data"}  # for exact resume, no weights
    assert set(checkpoint) == {LIGHTNING_KEY} | resume_keys and "state_dict" not in checkpoint[LIGHTNING_KEY]
    assert checkpoint[LIGHTNING_KEY]["metadata"]["features"]["n_mels"] == 8


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(800, dtype=np.float32), 8000)
    return path


def asr_record(**metadata_changes: Any) -> dict[str, Any]:
    """A valid ASR record of a tiny QuartzNet, with metadata entries replaced."""
    model = randomized(QuartzNet(**TINY["audiosep.models.quartznet.QuartzNet"]))
    features = LogMelFeatures(**QUARTZNET_FEATURES)
    metadata = {"task": "asr", "sample_rate": features.sample_rate, "features": features.config(),
                "vocabulary": CharTokenizer().vocabulary}  # fmt: skip
    return model_record(model, metadata | metadata_changes)


def one_line_cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``audiosep argv``; it must exit 1 with exactly one stderr line and no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("audiosep: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["infer", "transcribe"])
def test_cli_reports_a_crafted_checkpoint_in_one_line(
    command: str, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "pwned.txt"
    crafted = record(class_path="audiosep.io.atomic_write_text", init_args={"path": str(target), "text": "x"})
    path = write(tmp_path, crafted)
    err = one_line_cli_error(capsys, [command, "--ckpt", str(path), "--out-dir" if command == "infer" else "--out",
                                      str(tmp_path / "out"), str(wav)])  # fmt: skip
    assert str(path) in err and "is not an audiosep model class" in err
    assert not target.exists()


@pytest.mark.parametrize("command", ["infer", "transcribe"])
def test_cli_reports_bad_init_args_in_one_line(
    command: str, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, with_args(num_layers=10**9))
    assert "larger than the stored weights allow" in one_line_cli_error(capsys, [command, "--ckpt", str(path), str(wav)])


@pytest.mark.parametrize(
    "argv",
    [["infer"], ["transcribe"], ["export", "--format", "torchscript"]],
)
def test_cli_reports_a_class_path_nested_past_the_recursion_limit_in_one_line(
    argv: list[str], wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_deep(tmp_path, record(class_path=nested_lists(sys.getrecursionlimit() + 100)))
    args = [*argv, "--ckpt", str(path)] + ([] if argv[0] == "export" else [str(wav)])
    err = one_line_cli_error(capsys, args)
    assert str(path) in err and "class_path [[[[...]]]] is not a str" in err


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"features": {"bogus": 1}}, "takes no init args ['bogus']"),
        ({"features": LogMelFeatures(**QUARTZNET_FEATURES).config() | {"n_fft": 10**9}}, "n_fft=1000000000"),
        ({"features": "x"}, "LogMelFeatures args is a str"),
        ({"vocabulary": ["ab"]}, "every label must be one character"),
        ({"vocabulary": list("abc")}, "do not fit together"),  # 4 outputs, the model has 29
        ({"sample_rate": 8000}, "do not fit together"),  # the front end runs at 16 kHz
        ({"features": LogMelFeatures(n_mels=16).config()}, "do not fit together"),  # the model takes 8 bins
        ({"features": LogMelFeatures(**QUARTZNET_FEATURES).config() | {"log_guard": math.nan}}, "log_guard=nan"),
        ({"features": LogMelFeatures(**QUARTZNET_FEATURES).config() | {"log_guard": -1.0}}, "log_guard=-1.0 is not"),
        ({"features": LogMelFeatures(**QUARTZNET_FEATURES).config() | {"preemphasis": math.inf}}, "preemphasis=inf"),
        ({"features": LogMelFeatures(**QUARTZNET_FEATURES).config() | {"f_max": 9000.0}}, "f_max=9000.0"),
    ],
)
def test_transcribe_reports_bad_asr_metadata_in_one_line(
    metadata: dict[str, Any], problem: str, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, asr_record(**metadata))
    assert problem in one_line_cli_error(capsys, ["transcribe", "--ckpt", str(path), str(wav)])


def test_a_good_asr_record_rebuilds_a_transcriber(tmp_path: Path) -> None:
    transcriber = Transcriber.from_checkpoint(write(tmp_path, asr_record(), "asr.pt"))
    assert transcriber.features.config() == LogMelFeatures(**QUARTZNET_FEATURES).config()


def test_a_recogniser_given_to_infer_and_a_separator_given_to_transcribe_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command checks the kind of model it got, not only that it is one of ours."""
    from audiosep.models import conv_tasnet_demo

    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32) + 0.01, 8000)
    asr = tmp_path / "asr.pt"
    save_model(QuartzNet(16, 5, [[8, 3, 1, 2, 1, False], [12, 1, 1, 1, 1, False, False]]), asr, {"sample_rate": 8000})
    sep = tmp_path / "sep.pt"
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=1), sep, {"sample_rate": 8000})
    for argv, kind in ((["infer", "--ckpt", str(asr)], "not a separator"), (["transcribe", "--ckpt", str(sep)], "not a speech recogniser")):
        assert main([*argv, str(wav)]) == 1
        err = capsys.readouterr().err
        assert kind in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- settings that cost compute or outputs, not weights (review of stop 26) -----------------------


def test_a_conv_tasnet_dilated_past_the_layer_limit_is_refused(tmp_path: Path) -> None:
    """num_layers=31 dilated the last block 2**30 frames: oneDNN's conv crashed the process (SIGSEGV)."""
    assert "num_layers must be at most 16" in load_error(write(tmp_path, with_args(num_layers=31)))
    with pytest.raises(ValueError, match="num_layers must be at most 16"):
        ConvTasNet(**TINY[CONV_TASNET] | {"num_layers": 17})


def test_a_conv_tasnet_whose_kernel_spans_a_huge_reach_is_refused(tmp_path: Path) -> None:
    """conv_kernel_size is bounded by the stored weights only: at dilation 2**15 each tap pads 32768 frames, and a
    1 MB file (P = 4097, X = 16) took 2.7 GB and 7 s for 1 s of audio (reviewer)."""
    assert "spans 67107840 frames per repeat" in load_error(write(tmp_path, with_args(conv_kernel_size=1025, num_layers=16)))
    with pytest.raises(ValueError, match=r"conv_kernel_size 9 with num_layers 16 spans 524280 frames per repeat"):
        ConvTasNet(**TINY[CONV_TASNET] | {"conv_kernel_size": 9, "num_layers": 16})
    assert ConvTasNet(**TINY[CONV_TASNET] | {"conv_kernel_size": 5, "num_layers": 16}).num_sources  # 262140: allowed


@pytest.mark.parametrize(
    ("class_path", "changes", "problem"),
    [
        ("audiosep.models.sepformer.SepFormer", {"chunk_size": 4097}, "chunk_size=4097 is above 4096"),
        ("audiosep.models.tiny_sepformer.TinySepformer", {"num_intra_layers": 65}, "num_intra_layers=65 is above 64"),
        (CONV_TASNET, {"num_sources": 17}, "num_sources=17 is above 16"),
    ],
)  # fmt: skip
def test_settings_that_store_no_weights_are_capped(
    class_path: str, changes: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    """A 4 MB SepFormer with chunk_size 10**6 or a Tiny-Sepformer repeating its shared layer 251832 times
    loaded in 0.03 s and then ran for half an hour per second of audio; 3000 sources wrote 3000 files."""
    base = model_record(MODEL_CLASSES[class_path](**TINY[class_path]))
    assert problem in error_before_any_build(write(tmp_path, base | {"init_args": base["init_args"] | changes}))


def test_a_weight_viewing_a_few_values_of_a_large_storage_counts_only_those(tmp_path: Path) -> None:
    """A view of 200k stored values raised the cap by all of them, though the model reads a few."""
    base = record()
    weights = base["state_dict"]
    weight = weights["encoder.weight"]
    big = torch.zeros(200_000)
    big[: weight.numel()] = weight.flatten()
    viewed = weights | {"encoder.weight": big[: weight.numel()].view(weight.shape)}
    cap = sum(t.numel() for t in weights.values()) + INT_SLACK
    path = write(tmp_path, base | {"state_dict": viewed, "init_args": base["init_args"] | {"hidden_channels": cap + 1}})
    assert f"is larger than the stored weights allow ({cap})" in error_before_any_build(path)


def test_a_weight_that_overflows_the_models_dtype_is_refused(tmp_path: Path) -> None:
    """1e300 in float64 is finite in the file and +inf in the float32 model."""
    base = record()
    weight = base["state_dict"]["decoder.weight"].double()
    weight[0, 0, 0] = 1e300
    path = write(tmp_path, base | {"state_dict": base["state_dict"] | {"decoder.weight": weight}})
    assert "weight decoder.weight is not finite in torch.float32" in load_error(path)


def test_a_negative_running_variance_is_refused(tmp_path: Path) -> None:
    model = randomized(ConvTasNet(**TINY[CONV_TASNET] | {"norm": "BN"}))
    bad = model_record(model)
    name = next(k for k in bad["state_dict"] if k.endswith("running_var"))
    bad["state_dict"][name][0] = -1.0
    assert f"buffer {name} holds negative values" in load_error(write(tmp_path, bad))


def test_a_vocabulary_of_lone_surrogates_is_refused() -> None:
    """A transcript holding one could be neither printed nor written: transcribe lost every result."""
    with pytest.raises(ValueError, match="lone surrogates"):
        CharTokenizer(["a", "\ud800"])


def _tuple_bomb_pickle(width: int, depth: int) -> bytes:
    """Protocol 2: a tuple of ``width`` references to the tuple below, ``depth`` levels, used as a dict key."""
    out = bytearray(b"\x80\x02)q\x00")  # PROTO 2, EMPTY_TUPLE, BINPUT 0
    for level in range(1, depth + 1):
        out += b"(" + (b"h" + bytes([level - 1])) * width + b"tq" + bytes([level])  # MARK, BINGET.., TUPLE, BINPUT
    return bytes(out + b"}h" + bytes([depth]) + b"K\x01s.")  # EMPTY_DICT, BINGET top, BININT1 1, SETITEM, STOP


def test_a_pickle_standing_for_billions_of_values_is_refused_before_torch_load(tmp_path: Path) -> None:
    """1.3 KB made torch.load(weights_only=True) hash a tuple of 40**7 shared leaves: hours, in every loader
    (reviewer). The opcodes are walked, not run: refused at once, naming the file."""
    plain = tmp_path / "plain.pt"
    torch.save({"x": 1}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            # 40**4 values: past the limit, yet loaded in well under a second were it not refused (40**7: hours)
            target.writestr(info.filename, _tuple_bomb_pickle(40, 4) if info.filename.endswith("data.pkl") else data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"bomb.pt: not a readable checkpoint \(its \d+-byte pickle stands for more"):
        load_model(bomb)
    assert time.perf_counter() - start < 5
    assert "stands for more than" in pickle_problem(_tuple_bomb_pickle(40, 7))
    assert pickle_problem(_tuple_bomb_pickle(10, 3)) is None  # 1000 values: what any file may hold
    assert "a damaged pickle" in pickle_problem(b"\x80\x02t.")  # TUPLE without its mark
