"""SpeechBrain SepFormer / RE-SepFormer import: same outputs as SpeechBrain on random weights."""

from __future__ import annotations

import functools
import io
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch
from torch import Tensor, nn

from audiosep.checkpoint import load_model
from audiosep.cli import main
from audiosep.convert import resepformer_from_speechbrain, sepformer_from_speechbrain
from audiosep.convert.speechbrain import ConversionError, hyperparams_overrides, read_hyperparams
from audiosep.models.resepformer import RESepFormer
from audiosep.models.sepformer import SepFormer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dual_path = pytest.importorskip(
        "speechbrain.lobes.models.dual_path", reason="speechbrain is a test dependency"
    )
    resepformer = pytest.importorskip("speechbrain.lobes.models.resepformer")

CHANNELS, HEADS, FFN, KERNEL = 16, 2, 32, 8
# (T - kernel) divisible by the stride: SpeechBrain's encoder then covers every sample as ours does.
LENGTH = KERNEL + (KERNEL // 2) * 149


def randomize(*modules: nn.Module) -> None:
    """Random weights everywhere (norm gains too), so that no tensor can be mapped wrongly unseen."""
    generator = torch.Generator().manual_seed(0)
    for module in modules:
        module.eval()
        for param in module.parameters():
            scale = 0.3 if param.dim() > 1 else 0.2
            param.data = 0.5 * (param.dim() == 1) + scale * torch.randn(param.shape, generator=generator)


def speechbrain_separate(
    encoder: nn.Module, masknet: nn.Module, decoder: nn.Module, mixture: Tensor
) -> Tensor:
    """SpeechBrain's separation recipe: encoder -> masks -> decoder per source, ``[B, C, T]``; the samples after
    the last frame zero, as ``SepformerSeparation.separate_batch`` pads them."""
    with torch.no_grad():
        features = encoder(mixture)
        masks = masknet(features)  # [C, B, N, L]
        sources = torch.stack([decoder(features * mask).reshape(mixture.shape[0], -1) for mask in masks], 1)
        return torch.nn.functional.pad(sources, (0, mixture.shape[-1] - sources.shape[-1]))


def sepformer_parts(norm: str = "ln") -> tuple[nn.Module, nn.Module, nn.Module]:
    def block() -> nn.Module:
        return dual_path.SBTransformerBlock(
            2, CHANNELS, HEADS, d_ffn=FFN, dropout=0.0, use_positional_encoding=True, norm_before=True
        )

    encoder = dual_path.Encoder(kernel_size=KERNEL, out_channels=CHANNELS)
    masknet = dual_path.Dual_Path_Model(
        CHANNELS, CHANNELS, block(), block(), num_layers=2, norm=norm, K=10, num_spks=3,
        linear_layer_after_inter_intra=False,
    )  # fmt: skip
    decoder = dual_path.Decoder(
        in_channels=CHANNELS, out_channels=1, kernel_size=KERNEL, stride=KERNEL // 2, bias=False
    )
    randomize(encoder, masknet, decoder)
    return encoder, masknet, decoder


def resepformer_parts(causal: bool = False, norm_type: str = "gln") -> tuple[nn.Module, nn.Module, nn.Module]:
    def block() -> nn.Module:
        return resepformer.SBTransformerBlock_wnormandskip(
            2, CHANNELS, HEADS, d_ffn=FFN, dropout=0.0, use_positional_encoding=True, norm_before=True,
            causal=causal, norm_type=norm_type,
        )  # fmt: skip

    encoder = dual_path.Encoder(kernel_size=KERNEL, out_channels=CHANNELS)
    masknet = resepformer.ResourceEfficientSeparator(
        CHANNELS, causal=causal, num_spk=2, layer=3, unit=CHANNELS, segment_size=12, mem_type="av",
        seg_model=block(), mem_model=block(),
    )  # fmt: skip
    decoder = dual_path.Decoder(
        in_channels=CHANNELS, out_channels=1, kernel_size=KERNEL, stride=KERNEL // 2, bias=False
    )
    randomize(encoder, masknet, decoder)
    return encoder, masknet, decoder


def relative_error(ours: Tensor, reference: Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def state_dicts(*modules: nn.Module) -> list[dict[str, Tensor]]:
    return [module.state_dict() for module in modules]


@pytest.mark.parametrize(
    ("speechbrain_norm", "norm"), [("ln", "global_ln"), ("gln", "global_ln"), ("cln", "channel_ln")]
)
@pytest.mark.parametrize("length", [LENGTH, LENGTH + 5])  # frames that cover it, and 5 samples after the last
def test_sepformer_matches_speechbrain(speechbrain_norm: str, norm: str, length: int) -> None:
    """At a length the frames do not cover, the converted model drops the tail as SpeechBrain does (padding it
    into one more frame changed the global norms' statistics: 0.09-3.5 relative error; models reviewer)."""
    parts = sepformer_parts(speechbrain_norm)
    mixture = torch.randn(2, length)
    reference = speechbrain_separate(*parts, mixture)
    model = sepformer_from_speechbrain(*state_dicts(*parts), num_heads=HEADS, chunk_size=10, norm=norm)
    assert isinstance(model, SepFormer)
    assert model.init_args["num_sources"] == 3 and model.init_args["num_blocks"] == 2
    with torch.no_grad():
        assert relative_error(model(mixture), reference) < 1e-4


@pytest.mark.parametrize(("causal", "norm_type"), [(False, "gln"), (True, "cln")])
@pytest.mark.parametrize("length", [LENGTH, LENGTH + 5])
def test_resepformer_matches_speechbrain_per_utterance(causal: bool, norm_type: str, length: int) -> None:
    parts = resepformer_parts(causal, norm_type)
    mixtures = torch.randn(2, length)
    model = resepformer_from_speechbrain(*state_dicts(*parts), num_heads=HEADS, chunk_size=12, causal=causal)
    assert isinstance(model, RESepFormer)
    with torch.no_grad():
        ours = model(mixtures)
    # SpeechBrain's inter-chunk model mixes the utterances of a batch, so compare one at a time.
    for index in range(2):
        reference = speechbrain_separate(*parts, mixtures[index : index + 1])
        assert relative_error(ours[index : index + 1], reference) < 1e-4


def test_unsupported_speechbrain_layers_are_refused_not_dropped() -> None:
    block = dual_path.SBTransformerBlock(1, CHANNELS, HEADS, d_ffn=FFN, use_positional_encoding=True)
    masknet = dual_path.Dual_Path_Model(
        CHANNELS, CHANNELS, block, block, K=10, linear_layer_after_inter_intra=True
    )
    encoder, _, decoder = sepformer_parts()
    with pytest.raises(ConversionError, match="unexpected masknet tensor 'dual_mdl.0.intra_linear"):
        sepformer_from_speechbrain(*state_dicts(encoder, masknet, decoder), num_heads=HEADS)


def test_a_decoder_bias_is_refused_not_dropped() -> None:
    """``Decoder(bias=True)`` converted with the bias dropped: outputs 0.64 off SpeechBrain's (reviewer)."""
    encoder, masknet, _ = sepformer_parts()
    decoder = dual_path.Decoder(in_channels=CHANNELS, out_channels=1, kernel_size=KERNEL, stride=KERNEL // 2, bias=True)
    with pytest.raises(ConversionError, match=r"decoder.ckpt: weights audiosep's model has no place for \(\['bias'\]\)"):
        sepformer_from_speechbrain(*state_dicts(encoder, masknet, decoder), num_heads=HEADS)


def test_wrong_architecture_guess_is_a_clear_error() -> None:
    parts = sepformer_parts()
    with pytest.raises(ConversionError, match="holds a sepformer, not a resepformer"):
        resepformer_from_speechbrain(*state_dicts(*parts))
    with pytest.raises(ConversionError, match="cannot build SepFormer"):
        sepformer_from_speechbrain(*state_dicts(*parts), num_heads=3)


HYPERPARAMS = """
sample_rate: 8000
num_spks: 3
N_encoder_out: 16
kernel_size: 8
marker: !apply:pathlib.Path.touch [{marker}]
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>
SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 2
    d_model: !ref <N_encoder_out>
    nhead: 2
    d_ffn: 32
    use_positional_encoding: True
    norm_before: True
MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <N_encoder_out>
    num_layers: 2
    K: 10
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfintra>
    norm: ln
    linear_layer_after_inter_intra: False
    skip_around_intra: True
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: 4
    bias: False
"""


def write_folder(folder: Path, parts: tuple[nn.Module, ...], hyperparams: str | None) -> Path:
    folder.mkdir()
    for name, part in zip(("encoder", "masknet", "decoder"), parts, strict=True):
        torch.save(part.state_dict(), folder / f"{name}.ckpt")
    if hyperparams is not None:
        (folder / "hyperparams.yaml").write_text(hyperparams)
    return folder


def test_hyperparams_are_read_as_data_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    (tmp_path / "h.yaml").write_text(HYPERPARAMS.format(marker=marker))
    overrides = hyperparams_overrides(read_hyperparams(tmp_path / "h.yaml"), "sepformer")
    assert overrides == {"num_heads": 2, "pre_norm": True, "chunk_size": 10, "norm": "global_ln"}
    assert not marker.exists()


def test_pyyaml_python_tags_are_refused_not_run(tmp_path: Path) -> None:
    """``!!python/object/apply`` (PyYAML's own code tag) is not a SpeechBrain ``!`` tag: refused, never run."""
    marker = tmp_path / "executed"
    (tmp_path / "h.yaml").write_text(f"x: !!python/object/apply:pathlib.Path.touch [{marker}]\n")
    with pytest.raises(ConversionError, match="cannot read hyperparams"):
        read_hyperparams(tmp_path / "h.yaml")
    assert not marker.exists()


def test_unsupported_speechbrain_option_is_refused(tmp_path: Path) -> None:
    text = HYPERPARAMS.format(marker=tmp_path / "m").replace("linear_layer_after_inter_intra: False", "")
    (tmp_path / "h.yaml").write_text(text)
    with pytest.raises(ConversionError, match="linear_layer_after_inter_intra"):
        hyperparams_overrides(read_hyperparams(tmp_path / "h.yaml"), "sepformer")


def test_convert_command_writes_a_model_file_that_reproduces_speechbrain(tmp_path: Path, capsys) -> None:
    parts = sepformer_parts()
    folder = write_folder(tmp_path / "sb", parts, HYPERPARAMS.format(marker=tmp_path / "m"))
    out = tmp_path / "model.ckpt"
    masknet = (folder / "masknet.ckpt").read_bytes()
    assert main(["convert", "speechbrain", str(folder), "--out", str(folder / "masknet.ckpt")]) == 1
    assert "would replace one of the SpeechBrain files" in capsys.readouterr().err
    assert (folder / "masknet.ckpt").read_bytes() == masknet
    assert main(["convert", "speechbrain", str(folder), "--out", str(out)]) == 0
    assert "SepFormer" in capsys.readouterr().out
    out.write_bytes(b"a model of the user's")
    assert main(["convert", "speechbrain", str(folder), "--out", str(out)]) == 1  # never replaced unasked
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"a model of the user's"
    assert main(["convert", "speechbrain", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert "SepFormer" in capsys.readouterr().out
    model, metadata = load_model(out)
    assert metadata == {"sample_rate": 8000}
    mixture = 0.1 * torch.randn(1, LENGTH)
    with torch.no_grad():
        expected = speechbrain_separate(*parts, mixture)[0]
        assert relative_error(model(mixture)[0], expected) < 1e-4
    # ... and `audiosep infer` separates a file with it.
    sf.write(tmp_path / "mix.wav", mixture[0].numpy(), 8000, subtype="FLOAT")
    assert (
        main(["infer", str(tmp_path / "mix.wav"), "--ckpt", str(out), "--out-dir", str(tmp_path / "sep")])
        == 0
    )
    written = sorted((tmp_path / "sep").rglob("*.wav"))
    assert len(written) == 3
    for path in written:  # 16-bit files in an order of their own: match each to its closest source
        audio = torch.from_numpy(sf.read(path, dtype="float32")[0])
        correlation = torch.nn.functional.cosine_similarity(audio.unsqueeze(0), expected, dim=-1)
        assert correlation.abs().max() > 0.99


def test_convert_command_detects_resepformer_and_needs_a_sample_rate(tmp_path: Path, capsys) -> None:
    folder = write_folder(tmp_path / "sb", resepformer_parts(), hyperparams=None)
    out = tmp_path / "model.ckpt"
    assert main(["convert", "speechbrain", str(folder), "--out", str(out)]) == 1
    assert "sample_rate" in capsys.readouterr().err and not out.exists()
    argv = ["convert", "speechbrain", str(folder), "--out", str(out), "--sample-rate", "16000"]
    with pytest.warns(UserWarning, match="no hyperparams.yaml: the number of heads, the chunk size"):
        assert main([*argv, "--model", "resepformer"]) == 0  # defaults, said so (reviewer: silently, 0.255 off)
    model, metadata = load_model(out)
    assert isinstance(model, RESepFormer) and metadata["sample_rate"] == 16000


def test_convert_command_reports_a_folder_without_checkpoints(tmp_path: Path, capsys) -> None:
    assert main(["convert", "speechbrain", str(tmp_path), "--out", str(tmp_path / "m.ckpt")]) == 1
    assert "missing encoder.ckpt" in capsys.readouterr().err


def convert_folder(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``audiosep convert speechbrain`` expecting a one-line refusal; return it (no model file appears)."""
    out = folder.parent / "model.ckpt"
    assert main(["convert", "speechbrain", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"audiosep: error: {folder}") and err.count("\n") == 1 and len(err) < 400, err
    assert not out.exists()
    return err


def record_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The default device of every :class:`SepFormer` construction from now on ("meta" or "cpu")."""
    devices: list[str] = []
    build = SepFormer.__init__

    @functools.wraps(build)
    def recording(self: SepFormer, *args: object, **kwargs: object) -> None:
        devices.append(torch.empty(0).device.type)
        build(self, *args, **kwargs)

    monkeypatch.setattr(SepFormer, "__init__", recording)
    return devices


def claimed_sepformer(folder: Path, tensor: Callable[..., Tensor]) -> Path:
    """A few KB whose shapes claim a SepFormer with 256 channels and an FFN of 4000, keys for one layer only."""
    folder.mkdir()
    torch.save({"conv1d.weight": tensor(16, 1, 8)}, folder / "encoder.ckpt")
    torch.save({"weight": tensor(16, 1, 8)}, folder / "decoder.ckpt")
    torch.save(
        {
            "conv1d.weight": tensor(256, 16, 1),
            "conv2d.weight": tensor(512, 256, 1, 1),
            "dual_mdl.0.intra_mdl.mdl.layers.0.pos_ffn.ffn.0.weight": tensor(4000, 256),
            "dual_mdl.0.inter_mdl.mdl.layers.0.pos_ffn.ffn.0.weight": tensor(4000, 256),
            "dual_mdl.0.intra_norm.weight": tensor(256),
        },
        folder / "masknet.ckpt",
    )
    (folder / "hyperparams.yaml").write_text("sample_rate: 8000\n")
    return folder


def test_expanded_tensors_are_refused_before_any_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stride-0 views of one zero claim any shape while the file stores a single value."""
    devices = record_builds(monkeypatch)
    folder = claimed_sepformer(tmp_path / "sb", lambda *shape: torch.zeros(1).expand(*shape))
    err = convert_folder(folder, capsys)
    assert "encoder.ckpt: entry 'conv1d.weight' claims" in err and "but its storage holds 1" in err
    assert devices == []


def test_the_model_is_compared_with_the_weights_on_the_meta_device_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = record_builds(monkeypatch)
    folder = claimed_sepformer(tmp_path / "sb", torch.zeros)
    assert "checkpoint does not fit the model: missing" in convert_folder(folder, capsys)
    assert devices == ["meta"]


def test_non_finite_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "sb", sepformer_parts(), HYPERPARAMS.format(marker=tmp_path / "m"))
    state = torch.load(folder / "decoder.ckpt", weights_only=True)
    torch.save({"weight": torch.full_like(state["weight"], float("nan"))}, folder / "decoder.ckpt")
    assert "decoder.ckpt: entry 'weight' holds NaN or infinite values" in convert_folder(folder, capsys)


def test_a_compressed_checkpoint_is_refused_before_it_expands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch.save stores zip entries uncompressed; a deflated one would inflate in memory before any check."""
    folder = write_folder(tmp_path / "sb", sepformer_parts(), HYPERPARAMS.format(marker=tmp_path / "m"))
    stored = (folder / "masknet.ckpt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(stored)) as src, zipfile.ZipFile(folder / "masknet.ckpt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    err = convert_folder(folder, capsys)
    assert "masknet.ckpt: not a readable PyTorch checkpoint (zip entry" in err and "compressed with deflate" in err


LAUGHS = "l0: &l0 [lol, lol, lol]\nl1: &l1 [*l0, *l0, *l0]\nl2: &l2 [*l1, *l1, *l1]\n"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.replace("norm: ln", "norm: [1]"), "hyperparams.yaml: SpeechBrain setting for norm is [1], not of type str"),
        (lambda h: h.replace("K: 10", "K: ten"), "SpeechBrain setting for chunk_size is 'ten', not of type int"),
        (lambda h: h.replace("kernel_size: 8", "kernel_size: eight"), "decoder stride 4 != kernel 'eight' / 2"),
        (lambda h: LAUGHS + h.replace("skip_around_intra: True", "skip_around_intra: *l2"), "YAML aliases"),
        (lambda h: h.replace("num_spks: 3", "num_spks: " + "9" * 5000), "an integer of more than 100 characters"),
        (lambda h: h + "junk: " + "[" * 1000 + "]" * 1000, "cannot read hyperparams: not valid YAML (RecursionError"),
        (lambda h: h.replace("sample_rate: 8000", "sample_rate: true"), "no sample_rate in 1..384000"),
        (lambda h: h.replace("sample_rate: 8000", "sample_rate: !ref <rate>"), "hyperparams.yaml: sample_rate: !ref '<rate>' names no top-level key"),
        # A !ref that cannot be resolved (an expression, a missing name, a cycle) once became the paper default
        # (chunk 250, 8 heads) silently.
        (lambda h: h.replace("K: 10", "K: !ref <kernel_size> + 2"), "hyperparams.yaml: K: cannot resolve !ref '<kernel_size> + 2'"),
        (lambda h: h.replace("K: 10", "K: !ref <N> // 2"), "hyperparams.yaml: K: cannot resolve !ref '<N> // 2'"),
        (lambda h: h.replace("nhead: 2", "nhead: !ref <num_spks> - 1"), "hyperparams.yaml: nhead: cannot resolve !ref '<num_spks> - 1'"),
        (lambda h: h.replace("K: 10", "K: !ref <nope>"), "hyperparams.yaml: K: !ref '<nope>' names no top-level key"),
        (lambda h: h.replace("K: 10", "K: !ref <a>") + "a: !ref <b>\nb: !ref <a>\n", "hyperparams.yaml: K: !ref goes through more than 10 refs"),
        (lambda h: h.replace("norm_before: True", "norm_before: !ref <Encoder.bias>"), "hyperparams.yaml: norm_before: cannot resolve"),
    ],
)  # fmt: skip
def test_bad_hyperparams_are_one_line_errors_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[str], str], message: str
) -> None:
    folder = write_folder(tmp_path / "sb", sepformer_parts(), edit(HYPERPARAMS.format(marker=tmp_path / "m")))
    assert message in convert_folder(folder, capsys)


def test_a_ref_to_a_ref_resolves(tmp_path: Path) -> None:
    text = HYPERPARAMS.format(marker=tmp_path / "m").replace("K: 10", "K: !ref <chunk>") + "chunk: !ref <ten>\nten: 10\n"
    (tmp_path / "h.yaml").write_text(text)
    assert hyperparams_overrides(read_hyperparams(tmp_path / "h.yaml"), "sepformer")["chunk_size"] == 10


def test_a_huge_base_60_float_in_yaml_is_one_line() -> None:
    """YAML 1.1 reads ``1:1:...:1.5`` as a base-60 float: 200 groups overflowed into a traceback (reviewer)."""
    from audiosep.convert.untrusted import parse_untrusted_yaml
    from audiosep.errors import UserError

    with pytest.raises(UserError, match="not valid YAML"):
        parse_untrusted_yaml(("bad: " + "1:" * 200 + "1.5\n").encode())


def test_a_config_key_given_twice_is_refused_not_the_last_one_kept() -> None:
    """A NeMo config with two ``preprocessor:`` sections was converted with the last (reviewer)."""
    from audiosep.convert.untrusted import parse_untrusted_yaml
    from audiosep.errors import UserError

    with pytest.raises(UserError, match=r"key 'preprocessor' given twice \(first on line 1\)"):
        parse_untrusted_yaml(b"preprocessor: {sample_rate: 16000}\npreprocessor: {sample_rate: 8000}\n")
    assert parse_untrusted_yaml(b"a: {x: 1}\nb: [{x: 2}, {x: 3}]\n") == {"a": {"x": 1}, "b": [{"x": 2}, {"x": 3}]}


@pytest.mark.parametrize("text", ["true: a\nTrue: b\n", "1: a\n1.0: b\n", "0x10: a\n16: b\n", "x: 1\n'x': 2\n",
                                  "null: a\n~: b\n", "s: {k: 1, 'k': 2}\n"])  # fmt: skip
def test_yaml_keys_that_load_as_one_key_are_refused(text: str) -> None:
    """Keys are compared as the loaded dict holds them: ``true`` and ``True`` (two texts) were accepted and
    the last one kept (reviewer)."""
    from audiosep.convert.untrusted import parse_untrusted_yaml
    from audiosep.errors import UserError

    with pytest.raises(UserError, match=r"given twice \(first on line 1\)"):
        parse_untrusted_yaml(text.encode())


@pytest.mark.parametrize("text", ["!ref x: 1\nx: 2\n", "!new:foo.Bar x: 1\nx: 2\n"])
def test_a_tagged_key_and_the_same_plain_key_are_refused(text: str) -> None:
    """SpeechBrain's loader builds ``!ref x`` as a str equal to ``'x'``: one key in the dict, the last kept (reviewer)."""
    from audiosep.convert.speechbrain import _TaggedLoader
    from audiosep.convert.untrusted import parse_untrusted_yaml
    from audiosep.errors import UserError

    with pytest.raises(UserError, match=r"key 'x' given twice \(first on line 1\)"):
        parse_untrusted_yaml(text.encode(), _TaggedLoader)


def test_yaml_keys_that_load_as_two_keys_are_kept() -> None:
    """``1`` and ``'1'`` are text-equal but load as an int and a str: both kept (they were refused)."""
    from audiosep.convert.untrusted import parse_untrusted_yaml

    assert parse_untrusted_yaml(b"1: a\n'1': b\n") == {1: "a", "1": "b"}
    assert parse_untrusted_yaml(b"yes: a\n'yes': b\n") == {True: "a", "yes": "b"}
    long_key = "1:" * 200 + "1"  # a base-60 int too long to resolve: compared as text
    assert parse_untrusted_yaml(f"{long_key}x: a\n{long_key}y: b\n".encode()) == {f"{long_key}x": "a", f"{long_key}y": "b"}


RESEPFORMER_STACK = {"__tag__": "speechbrain.lobes.models.resepformer.SBTransformerBlock_wnormandskip",
                     "nhead": 2, "norm_before": True, "use_positional_encoding": True}  # fmt: skip


def resepformer_hparams(mem: dict[str, object]) -> dict[str, object]:
    """Parsed RE-SepFormer hyperparams whose mem stack states ``mem`` besides the seg stack's settings."""
    masknet = {"__tag__": "speechbrain.lobes.models.resepformer.ResourceEfficientSeparator", "mem_type": "av",
               "segment_size": 12, "seg_model": dict(RESEPFORMER_STACK), "mem_model": RESEPFORMER_STACK | mem}  # fmt: skip
    return {"sample_rate": 8000, "MaskNet": masknet}


@pytest.mark.parametrize(
    ("mem", "message"),
    [
        ({"activation": "gelu"}, "intra activation='relu', inter activation='gelu'"),
        ({"causal": True}, "intra causal=False, inter causal=True"),
        ({"norm_type": "cln"}, "intra norm_type='gln', inter norm_type='cln'"),
        ({"use_skip": False}, "intra use_skip=True, inter use_skip=False"),
        ({"use_positional_encoding": False}, "intra use_positional_encoding=True, inter use_positional_encoding=False"),
    ],
)
def test_an_inter_stack_setting_unlike_the_intra_one_is_refused(mem: dict[str, object], message: str) -> None:
    """Only the intra (seg) stack's settings were read: a mem stack with GELU, no skip, cLN or causal attention
    converted silently, 0.013 to 1.32 off SpeechBrain's outputs (reviewer)."""
    assert hyperparams_overrides(resepformer_hparams({}), "resepformer")["chunk_size"] == 12
    with pytest.raises(ConversionError, match=f"unsupported SpeechBrain setting: {message}"):
        hyperparams_overrides(resepformer_hparams(mem), "resepformer")


def test_a_sepformer_inter_stack_with_gelu_is_refused(tmp_path: Path) -> None:
    text = HYPERPARAMS.format(marker=tmp_path / "m").replace("inter_model: !ref <SBtfintra>", "inter_model: !ref <SBtfinter>")
    text += "SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock\n    nhead: 2\n    norm_before: True\n"
    text += "    use_positional_encoding: True\n    activation: gelu\n"
    (tmp_path / "h.yaml").write_text(text)
    with pytest.raises(ConversionError, match="intra activation='relu', inter activation='gelu'"):
        hyperparams_overrides(read_hyperparams(tmp_path / "h.yaml"), "sepformer")


def test_a_stack_saved_without_positional_encodings_is_refused(tmp_path: Path, capsys) -> None:
    """Weights without ``pos_enc.pe`` come from ``use_positional_encoding=False``: converted as if with them,
    0.225 off (reviewer)."""
    encoder, _, decoder = sepformer_parts()
    intra = dual_path.SBTransformerBlock(2, CHANNELS, HEADS, d_ffn=FFN, use_positional_encoding=True, norm_before=True)
    inter = dual_path.SBTransformerBlock(2, CHANNELS, HEADS, d_ffn=FFN, use_positional_encoding=False, norm_before=True)
    masknet = dual_path.Dual_Path_Model(CHANNELS, CHANNELS, intra, inter, num_layers=2, K=10, num_spks=3,
                                        linear_layer_after_inter_intra=False)  # fmt: skip
    with pytest.raises(ConversionError, match=r"no positional encoding table \(dual_mdl.0.inter_mdl.pos_enc.pe\)"):
        sepformer_from_speechbrain(*state_dicts(encoder, masknet, decoder), num_heads=HEADS)


def test_hyperparams_without_the_model_entry_warn_in_one_line(tmp_path: Path) -> None:
    """A hyperparams.yaml with no Dual_Path_Model entry took the defaults silently (0.56 off on a 2-head post-norm
    model; reviewer), and the CLI printed Python's two-line warning with our source path."""
    import subprocess
    import sys

    folder = write_folder(tmp_path / "sb", sepformer_parts(), "sample_rate: 8000\n")
    result = subprocess.run([sys.executable, "-m", "audiosep", "convert", "speechbrain", str(folder), "--out",
                             str(tmp_path / "m.ckpt")], capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "Dual_Path_Model" in line]
    assert warned == [f"audiosep: warning: {folder}: hyperparams.yaml has no Dual_Path_Model, intra_model, inter_model "
                      "entry: the number of heads, the chunk size and the norm placement are SpeechBrain's pretrained "
                      "defaults, not read from this model; copy its hyperparams.yaml into the folder if they differ"]
    assert "UserWarning" not in result.stderr and "site-packages" not in result.stderr and "audiosep/" not in result.stderr


def test_a_newline_in_a_folder_name_stays_on_one_error_line(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bad\nname"
    folder.mkdir()
    assert main(["convert", "speechbrain", str(folder), "--out", str(tmp_path / "m.ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad\\nname: missing encoder.ckpt" in err
