"""``audiosep convert nemo`` on crafted archives: every bad input is a one-line error, bounded in memory.

The archives are tiny tars written here (a 3-block QuartzNet with 16 mel bins); the end-to-end
comparison with NeMo's forward pass is in ``tests/asr/test_asr_nemo.py``.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from audiosep.cli import main
from audiosep.convert.nemo import block_from_nemo, key_map
from audiosep.models.quartznet import QuartzNet

JASPER = [
    {"filters": 8, "repeat": 1, "kernel": [5], "stride": [2], "dilation": [1], "residual": False, "separable": True},
    {"filters": 8, "repeat": 2, "kernel": [5], "stride": [1], "dilation": [1], "residual": True, "separable": True},
    {"filters": 16, "repeat": 1, "kernel": [1], "stride": [1], "dilation": [1], "residual": False, "separable": False},
]  # fmt: skip
CONFIG = {
    "preprocessor": {"sample_rate": 16000, "features": 16, "window_size": 0.02, "window_stride": 0.01, "n_fft": 512},
    "encoder": {"feat_in": 16, "activation": "relu", "jasper": JASPER},
    "decoder": {"feat_in": 16, "num_classes": 4, "vocabulary": [" ", "a", "b", "'"]},
}  # fmt: skip


@functools.cache
def nemo_state() -> dict[str, torch.Tensor]:
    """Weights under NeMo's key names for :data:`CONFIG` (the converter's own key map, run backwards)."""
    model = QuartzNet(16, 5, [block_from_nemo(layer) for layer in JASPER], norm="batch_norm", norm_eps=1e-3)
    ours = model.state_dict()
    return {theirs: ours[key].clone() for key, theirs in key_map(model, {}).items()}


def weights(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_archive(path: Path, config: bytes | None = None, state: bytes | None = None, mode: str = "w",
                  extra: tuple[tuple[str, bytes], ...] = ()) -> Path:  # fmt: skip
    """A tar (``mode`` "w" or "w:gz"): ``config``, ``state`` (valid ones if None), then ``extra``."""
    config = config_with(lambda c: None) if config is None else config
    state = weights(nemo_state()) if state is None else state
    with tarfile.open(path, mode) as archive:
        for name, data in (("./model_config.yaml", config), ("./model_weights.ckpt", state), *extra):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def deflated(data: bytes) -> bytes:
    """A torch.save zip ``data`` with its entries re-packed with DEFLATE (torch.save stores them)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def config_with(edit: Any) -> bytes:
    """:data:`CONFIG` as YAML after ``edit(config)``."""
    config = copy.deepcopy(CONFIG)
    edit(config)
    return yaml.safe_dump(config).encode()


def convert(archive: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``audiosep convert nemo``: (exit code, stderr); no model file may appear on failure."""
    out = archive.with_suffix(".pt")
    code = main(["convert", "nemo", str(archive), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 or not out.exists()
    return code, err


def assert_one_line_refusal(archive: Path, capsys: pytest.CaptureFixture[str], message: str) -> None:
    code, err = convert(archive, capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"audiosep: error: {archive}: ") and err.count("\n") == 1, err
    assert message in err and len(err) < 400, err


def test_tiny_archive_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The base every crafted archive below departs from is valid."""
    assert convert(write_archive(tmp_path / "ok.nemo"), capsys)[0] == 0


def test_floats_that_yaml_reads_as_strings_are_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """YAML 1.1 reads ``1e-05`` (no dot) as a string; NeMo configs mean the number."""
    config = config_with(lambda c: None).replace(b"window_size: 0.02", b"window_size: 2e-2\n  dither: 1e-05")
    assert b"dither: 1e-05" in config
    archive = write_archive(tmp_path / "strings.nemo", config)
    assert convert(archive, capsys)[0] == 0
    from audiosep.transcriber import Transcriber

    assert Transcriber.from_checkpoint(archive.with_suffix(".pt")).features.dither == pytest.approx(1e-5)


def test_config_sizes_are_checked_against_the_weights_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``filters: 2000`` with weights for 8 channels: refused from the meta build, in one line."""

    def widen(config: dict[str, Any]) -> None:
        for layer in config["encoder"]["jasper"][:2]:
            layer["filters"] = 2000

    archive = write_archive(tmp_path / "wide.nemo", config_with(widen))
    assert_one_line_refusal(
        archive, capsys, "state_dict shapes do not fit QuartzNet: blocks.0.layers.0.pointwise"
    )


@pytest.mark.parametrize(
    ("config_size", "weights_size", "message"),
    [
        ((1 << 20) + 1, None, "model_config.yaml: 1048577 bytes, more than a NeMo config needs"),
        (None, 8 << 20, "model_weights.ckpt: 8388608 bytes, more than the model can hold"),
    ],
)
def test_members_larger_than_their_bound_are_refused_unread(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config_size: int | None,
    weights_size: int | None,
    message: str,
) -> None:
    """A gzipped archive of a few KB whose member expands to megabytes of zeros (a gzip bomb, small). Unread: a
    one-pass reader read the weights up to the flat 2 GiB bound before the model's (reviewer: 1 GB of memory
    for a 512 MiB member)."""
    config, state = (None if size is None else bytes(size) for size in (config_size, weights_size))
    archive = write_archive(tmp_path / "bomb.nemo", config, state, "w:gz")
    assert archive.stat().st_size < 64 << 10
    extracted: list[str] = []
    real = tarfile.TarFile.extractfile
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extractfile", lambda self, member: extracted.append(member.name) or real(self, member))
        assert_one_line_refusal(archive, capsys, message)
    assert not [name for name in extracted if name.endswith(message.partition(":")[0])]


def test_a_deflated_weights_member_within_its_tar_bound_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tar header bounds the member's compressed size; its zip entries would inflate far past it."""
    bomb = nemo_state() | {"encoder.encoder.9.zeros": torch.zeros(1 << 20)}  # 4 MB of zeros, ~4 KB deflated
    data = deflated(weights(bomb))
    assert len(data) < 64 << 10
    archive = write_archive(tmp_path / "bomb.nemo", state=data)
    assert_one_line_refusal(archive, capsys, "is compressed with deflate; torch.save writes entries uncompressed")


def test_a_second_config_member_is_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = (("sub/model_config.yaml", config_with(lambda c: None)),)
    archive = write_archive(tmp_path / "dup.nemo", extra=extra)
    assert_one_line_refusal(archive, capsys, "ambiguous archive: 2 members named model_config.yaml")


class _TouchOnLoad:
    """Pickles to a call that creates ``marker``: proof that the weights were never unpickled freely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


LAUGHS = "l0: &l0 [lol, lol, lol]\nl1: &l1 [*l0, *l0, *l0]\nl2: &l2 [*l1, *l1, *l1]\n"
BAD_CONFIGS = {
    "bad_yaml": (b"encoder: [unclosed\n", "model_config.yaml: not valid YAML (ParserError"),
    # os.mkdir: a tag PyYAML's unsafe loader really calls (it finds no module "pathlib.Path")
    "python_tag": (b"!!python/object/apply:os.mkdir [{marker}]\n", "could not determine a constructor"),
    "not_utf8": (b"\xff\xfe\x00bad", "model_config.yaml: not UTF-8 text"),
    "yaml_list": (b"- 1\n- 2\n", "model_config.yaml: holds a list, not a mapping"),
    "alias_bomb": (
        LAUGHS.encode() + config_with(lambda c: None).replace(b"  window_size:", b"  window: *l2\n  window_size:"),
        "YAML aliases (*name) are not supported",
    ),
    "merge_key": (b"base: &base {feat_in: 16}\nencoder: {<<: *base}\n", "YAML aliases (*name) are not supported"),
    "huge_int": (b"encoder: {feat_in: " + b"9" * 5000 + b"}\n", "an integer of more than 100 characters"),
    "deep_nesting": (b"encoder: " + b"[" * 1000 + b"]" * 1000 + b"\n", "not valid YAML (RecursionError"),
    "no_jasper": (config_with(lambda c: c["encoder"].pop("jasper")), "the encoder has no 'jasper' block list"),
    "jasper_not_list": (config_with(lambda c: c["encoder"].update(jasper="abc")), "no 'jasper' block list"),
    "block_not_mapping": (config_with(lambda c: c["encoder"]["jasper"].append(3)), "block 3: a block must be a mapping, got 3"),
    "bad_filters": (
        config_with(lambda c: c["encoder"]["jasper"][0].update(filters="many")),
        "encoder jasper block 0: filters must be a positive integer, got 'many'",
    ),
    "neg_filters": (
        config_with(lambda c: c["encoder"]["jasper"][0].update(filters=-5)),
        "filters must be a positive integer, got -5",
    ),
    "bad_dropout": (config_with(lambda c: c["encoder"]["jasper"][1].update(dropout="x")), "block 1: dropout must be a number"),
    "zero_rate": (config_with(lambda c: c["preprocessor"].update(sample_rate=0)), "sample_rate=0"),
    "list_activation": (config_with(lambda c: c["encoder"].update(activation=[1] * 200)), "unsupported activation"),
    "word_labels": (config_with(lambda c: c["decoder"].update(vocabulary=["ab", "c"])), "unsupported vocabulary"),
    "feat_in_mismatch": (config_with(lambda c: c["encoder"].update(feat_in=8)), "feat_in 8 != preprocessor features 16"),
    "nan_dropout": (config_with(lambda c: c["encoder"]["jasper"][1].update(dropout=float("nan"))), "block 1: dropout must be a number in [0, 1), got nan"),
    "one_dropout": (config_with(lambda c: c["encoder"]["jasper"][0].update(dropout=1.0)), "block 0: dropout must be a number in [0, 1)"),
    "inf_preemph": (config_with(lambda c: c["preprocessor"].update(preemph=float("inf"))), "preemphasis=inf holds NaN or infinity"),
    "neg_log_guard": (config_with(lambda c: c["preprocessor"].update(log_zero_guard_value=-1)), "log_guard=-1 is not in (0, 1]"),
    "nan_highfreq": (config_with(lambda c: c["preprocessor"].update(highfreq=float("nan"))), "f_max=nan holds NaN or infinity"),
    "highfreq_above_nyquist": (config_with(lambda c: c["preprocessor"].update(highfreq=9000)), "f_max=9000 are not a band"),
    "lowfreq_above_highfreq": (config_with(lambda c: c["preprocessor"].update(lowfreq=4000, highfreq=3000)), "not a band"),
    "nan_dither": (config_with(lambda c: c["preprocessor"].update(dither="nan")), "dither=nan holds NaN or infinity"),
}  # fmt: skip


def legacy(state: Any) -> bytes:
    """``state`` in torch's legacy (non-zip) format, whose storage sizes are allocated before any data is read."""
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def replaced(key: Any, value: torch.Tensor) -> Any:
    """Weights of :func:`nemo_state` with ``key`` set to ``value`` (for the table below, built lazily)."""
    return lambda marker: weights(nemo_state() | {key: value})


BAD_WEIGHTS = {
    "garbage": (lambda marker: bytes(range(256)) * 2, "model_weights.ckpt: not a readable PyTorch checkpoint"),
    "pickle": (lambda marker: pickle.dumps({"x": _TouchOnLoad(marker)}), "not a readable PyTorch checkpoint"),
    "list": (lambda marker: weights([1, 2]), "model_weights.ckpt: holds a list, not a state dict"),
    "nan": (replaced("decoder.decoder_layers.0.bias", torch.full((5,), float("nan"))), "holds NaN or infinite"),
    "inf": (replaced("encoder.encoder.0.mconv.2.weight", torch.full((8,), float("inf"))), "NaN or infinite"),
    "expanded": (replaced("decoder.decoder_layers.0.weight", torch.zeros(1).expand(5, 16, 1)), "claims 80 values but its storage holds 1"),
    "meta": (replaced("decoder.decoder_layers.0.bias", torch.empty(5, device="meta")), "is on the meta device, not the CPU"),
    "complex": (replaced("decoder.decoder_layers.0.bias", torch.zeros(5, dtype=torch.complex64)), "has the complex dtype"),
    "int_key": (replaced(3, torch.zeros(1)), "not a name -> tensor one"),
    "deflated": (lambda marker: deflated(weights(nemo_state())), "model_weights.ckpt: not a readable PyTorch checkpoint (zip entry"),
    "legacy_format": (lambda marker: legacy(nemo_state()), "not a readable PyTorch checkpoint (not a zip file"),
}  # fmt: skip


BAD_MEMBERS = [("config", name) for name in sorted(BAD_CONFIGS)] + [("state", name) for name in sorted(BAD_WEIGHTS)]


@pytest.mark.parametrize(("member", "name"), BAD_MEMBERS)
def test_bad_configs_and_weights_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str, name: str
) -> None:
    """Nothing a member holds is run (the python tag and the pickle would create ``marker``)."""
    marker = tmp_path / "executed"
    if member == "config":
        payload, message = BAD_CONFIGS[name]
        payload = payload.replace(b"{marker}", str(marker).encode())
    else:
        make_weights, message = BAD_WEIGHTS[name]
        payload = make_weights(marker)
    archive = write_archive(tmp_path / f"{name}.nemo", **{member: payload})
    assert_one_line_refusal(archive, capsys, message)
    assert not marker.exists()


def test_a_file_that_is_no_tar_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.nemo").write_bytes(b"")
    assert_one_line_refusal(tmp_path / "empty.nemo", capsys, "not a .nemo archive")


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_huge_extended_tar_header_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: bytes
) -> None:
    """tarfile reads a pax header or GNU long name whole before handing out the member: an 8.6 KB bz2 archive
    took 2.7 GB of memory, and one declaring 1 TiB ended in a MemoryError traceback (reviewer)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = kind, 1 << 40
    header = info._create_header(info.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    archive = tmp_path / "pax.nemo"
    archive.write_bytes(header + write_archive(tmp_path / "ok.tar").read_bytes())
    assert_one_line_refusal(archive, capsys, f"an extended tar header of {1 << 40} bytes (at most 65536)")


def test_members_past_the_archive_budget_are_refused_before_they_are_decompressed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped members of a compressed archive were decompressed three times, whatever their size: an 8.4 KB
    bz2 file holding 3 GiB of zeros took 25 s, and converted (reviewer). The declared sizes are added up first,
    and the archive is read once (stream mode)."""
    import audiosep.convert.nemo as nemo

    monkeypatch.setattr(nemo, "MAX_ARCHIVE_BYTES", 1 << 20)
    padding = (("padding.bin", bytes(2 << 20)),)
    archive = write_archive(tmp_path / "bomb.nemo", mode="w:bz2", extra=padding)
    assert_one_line_refusal(archive, capsys, f"its members hold more than {1 << 20} bytes")
    assert convert(write_archive(tmp_path / "ok.nemo", mode="w:bz2", extra=(("x.txt", b"x"),)), capsys)[0] == 0


def test_weights_before_the_config_are_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights first were read up to a flat 2 GiB before the config bounded them: a 2 MB gzipped archive took
    4.7 GB of memory and 30 s (reviewer). NeMo writes the config first."""
    archive = tmp_path / "first.nemo"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("./model_weights.ckpt", bytes(8 << 20)), ("./model_config.yaml", config_with(lambda c: None))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    extracted: list[str] = []
    real = tarfile.TarFile.extractfile
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extractfile", lambda self, member: extracted.append(member.name) or real(self, member))
        assert_one_line_refusal(archive, capsys, "model_weights.ckpt comes before model_config.yaml")
    assert extracted == []


def test_weights_that_do_not_start_as_a_zip_file_are_refused_before_the_rest_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = tarfile.ExFileObject.read
    monkeypatch.setattr(tarfile.ExFileObject, "read", lambda self, size=-1: reads.append(size) or real(self, size))
    archive = write_archive(tmp_path / "zeros.nemo", state=bytes(1 << 16))
    assert_one_line_refusal(archive, capsys, r"model_weights.ckpt: not a readable PyTorch checkpoint (not a zip file: it starts with b'\x00\x00\x00\x00')")
    assert reads[-1] == 4  # the weights' first 4 bytes, and nothing after them


def test_a_folder_or_a_missing_path_is_named_as_what_it_is(tmp_path: Path) -> None:
    """A folder was reported as "no such file" (reviewer)."""
    from audiosep.convert.nemo import convert_nemo
    from audiosep.errors import UserError

    (tmp_path / "model.nemo").mkdir()
    with pytest.raises(UserError, match=r"model.nemo: a folder, not a .nemo file$"):
        convert_nemo(tmp_path / "model.nemo")
    with pytest.raises(UserError, match=r"other.nemo: no such file$"):
        convert_nemo(tmp_path / "other.nemo")
