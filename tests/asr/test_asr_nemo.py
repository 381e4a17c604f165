"""NeMo ``.nemo`` import on a fabricated archive: NeMo's key names, its config layout, its forward pass.

The archive's model is a minimal re-implementation of NeMo's ``JasperBlock`` layout (``mconv`` list of
masked convs / BatchNorm / ReLU / Dropout, ``res.0`` projection, ``decoder.decoder_layers.0``), so
the state dict carries exactly NeMo's key names and the test can compare outputs end to end.
"""

from __future__ import annotations

import copy
import io
import tarfile

import pytest
import torch
import yaml
from asr_helpers import randomize_batchnorm
from torch import nn

from audiosep.cli import main
from audiosep.data.tokenizer import DEFAULT_VOCABULARY
from audiosep.transcriber import Transcriber

JASPER = [
    {
        "filters": 16,
        "repeat": 1,
        "kernel": [5],
        "stride": [2],
        "dilation": [1],
        "dropout": 0.0,
        "residual": False,
        "separable": True,
    },
    {
        "filters": 16,
        "repeat": 2,
        "kernel": [7],
        "stride": [1],
        "dilation": [1],
        "dropout": 0.0,
        "residual": True,
        "separable": True,
    },
    {
        "filters": 24,
        "repeat": 1,
        "kernel": [9],
        "stride": [1],
        "dilation": [2],
        "dropout": 0.0,
        "residual": False,
        "separable": True,
    },
    {
        "filters": 32,
        "repeat": 1,
        "kernel": [1],
        "stride": [1],
        "dilation": [1],
        "dropout": 0.0,
        "residual": False,
        "separable": False,
    },
]


class MaskedConv(nn.Module):
    """NeMo's MaskedConv1d: zero the input past each length, then ``self.conv``."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, groups, bias=False)

    def forward(self, x, lens):
        x = x * (torch.arange(x.shape[-1]) < lens[:, None]).unsqueeze(1)
        c = self.conv
        span = c.dilation[0] * (c.kernel_size[0] - 1)
        return c(x), (lens + 2 * c.padding[0] - span - 1) // c.stride[0] + 1


class FakeJasperBlock(nn.Module):
    def __init__(self, cin, cfg):
        super().__init__()
        cout, k, s, d = cfg["filters"], cfg["kernel"][0], cfg["stride"][0], cfg["dilation"][0]
        layers, c = [], cin
        for r in range(cfg["repeat"]):
            if cfg["separable"]:
                layers += [MaskedConv(c, c, k, s, d, groups=c), MaskedConv(c, cout, 1)]
            else:
                layers += [MaskedConv(c, cout, k, s, d)]
            layers.append(nn.BatchNorm1d(cout, eps=1e-3))
            if r < cfg["repeat"] - 1:
                layers += [nn.ReLU(), nn.Dropout(0.0)]
            c = cout
        self.mconv = nn.ModuleList(layers)
        self.res = (
            nn.ModuleList([nn.ModuleList([MaskedConv(cin, cout, 1), nn.BatchNorm1d(cout, eps=1e-3)])])
            if cfg["residual"]
            else None
        )
        self.mout = nn.Sequential(nn.ReLU(), nn.Dropout(0.0))

    def forward(self, x, lens):
        out, out_lens = x, lens
        for layer in self.mconv:
            out, out_lens = layer(out, out_lens) if isinstance(layer, MaskedConv) else (layer(out), out_lens)
        if self.res is not None:
            out = out + self.res[0][1](self.res[0][0](x, lens)[0])
        return self.mout(out), out_lens


class FakeEncDecCTC(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        blocks, c = [], 64
        for cfg in JASPER:
            blocks.append(FakeJasperBlock(c, cfg))
            c = cfg["filters"]
        self.encoder.encoder = nn.Sequential(*blocks)
        self.decoder = nn.Module()
        self.decoder.decoder_layers = nn.Sequential(nn.Conv1d(c, len(DEFAULT_VOCABULARY) + 1, 1))

    def forward(self, feats, lens):
        for block in self.encoder.encoder:
            feats, lens = block(feats, lens)
        return self.decoder.decoder_layers(feats).transpose(1, 2).log_softmax(-1), lens


def nemo_config():
    return {
        "sample_rate": 16000,
        "labels": list(DEFAULT_VOCABULARY),
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "normalize": "per_feature", "window_size": 0.02, "sample_rate": 16000, "window_stride": 0.01,
            "window": "hann", "features": 64, "n_fft": 512, "frame_splicing": 1, "dither": 1.0e-5,
        },
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64, "activation": "relu", "conv_mask": True, "jasper": copy.deepcopy(JASPER)},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32, "num_classes": 28, "vocabulary": list(DEFAULT_VOCABULARY)},
    }  # fmt: skip


def write_nemo(path, config, state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (
            ("./model_config.yaml", yaml.safe_dump(config).encode()),
            ("./model_weights.ckpt", buffer.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def nemo_filterbank() -> torch.Tensor:
    """The ``[1, 64, 257]`` filterbank NeMo stores (librosa's Slaney mel scale and norm), from torchaudio."""
    import torchaudio

    banks = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 64, 16000, norm="slaney", mel_scale="slaney")
    return banks.T[None]


@pytest.fixture()
def fake_nemo(tmp_path):
    torch.manual_seed(0)
    fake = FakeEncDecCTC()
    randomize_batchnorm(fake)
    state = {
        f"preprocessor.featurizer.{k}": v
        for k, v in {"window": torch.hann_window(320, periodic=False), "fb": nemo_filterbank()}.items()
    }
    state |= fake.state_dict()
    write_nemo(tmp_path / "QuartzNetTiny.nemo", nemo_config(), state)
    return tmp_path / "QuartzNetTiny.nemo", fake.eval()


def test_convert_cli_matches_nemo_forward(fake_nemo, tmp_path, capsys):
    archive, fake = fake_nemo
    assert (
        "encoder.encoder.1.mconv.5.conv.weight" in fake.state_dict()
    )  # NeMo's layout: 2nd sub-block's depthwise
    before = archive.read_bytes()
    assert main(["convert", "nemo", str(archive), "--out", str(archive)]) == 1
    assert "would replace the NeMo archive" in capsys.readouterr().err and archive.read_bytes() == before
    assert main(["convert", "nemo", str(archive), "--out", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert main(["convert", "nemo", str(archive), "--out", str(tmp_path / "model.pt")]) == 0
    assert main(["convert", "nemo", str(archive), "--out", str(tmp_path / "model.pt")]) == 1  # never replaced unasked
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "nemo", str(archive), "--out", str(tmp_path / "model.pt"), "--overwrite"]) == 0
    transcriber = Transcriber.from_checkpoint(tmp_path / "model.pt")
    feats, lens = torch.randn(2, 64, 45), torch.tensor([45, 30])
    ours, our_lens = transcriber.model(feats, lens)
    with torch.no_grad():
        theirs, their_lens = fake(feats, lens)
    assert our_lens.tolist() == their_lens.tolist()
    for b, n in enumerate(our_lens.tolist()):
        torch.testing.assert_close(ours[b, :n], theirs[b, :n], atol=1e-5, rtol=1e-5)
    cfg = transcriber.features.config()
    assert (cfg["sample_rate"], cfg["n_mels"], cfg["n_fft"], cfg["window_size"], cfg["dither"]) == (
        16000,
        64,
        512,
        0.02,
        1e-5,
    )
    assert transcriber.tokenizer.vocabulary == list(DEFAULT_VOCABULARY)


def test_old_cls_params_layout_is_read(tmp_path):
    config = nemo_config()
    for key in ("preprocessor", "encoder", "decoder"):
        config[key] = {"cls": config[key].pop("_target_"), "params": config[key]}
    write_nemo(tmp_path / "old.nemo", config, FakeEncDecCTC().state_dict())
    assert main(["convert", "nemo", str(tmp_path / "old.nemo"), "--out", str(tmp_path / "old.pt")]) == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c, s: c["encoder"]["jasper"][1].update(se=True), "unsupported NeMo block"),
        (lambda c, s: s.pop("encoder.encoder.1.res.0.0.conv.weight"), "weights missing"),
        (lambda c, s: s.update({"encoder.encoder.9.extra": torch.zeros(1)}), "does not understand"),
        (lambda c, s: c["preprocessor"].update(frame_splicing=3), "preprocessor"),
    ],
)
def test_unsupported_or_inconsistent_archives_fail_with_one_line(tmp_path, capsys, edit, message):
    config, state = nemo_config(), FakeEncDecCTC().state_dict()
    edit(config, state)
    write_nemo(tmp_path / "bad.nemo", config, state)
    assert main(["convert", "nemo", str(tmp_path / "bad.nemo"), "--out", str(tmp_path / "bad.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("audiosep: error:") and message in err and "\n" not in err
    assert not (tmp_path / "bad.pt").exists()


def test_not_an_archive(tmp_path, capsys):
    (tmp_path / "x.nemo").write_bytes(b"plain bytes")
    assert main(["convert", "nemo", str(tmp_path / "x.nemo"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "not a .nemo archive" in capsys.readouterr().err


def test_a_stored_filterbank_other_than_the_settings_give_is_refused(fake_nemo, tmp_path, capsys):
    """It was a warning, and the model was written with features it never heard (mel_norm: null: 0.19 off)."""
    archive, fake = fake_nemo
    state = {"preprocessor.featurizer.fb": torch.zeros(1, 64, 257)} | fake.state_dict()
    write_nemo(tmp_path / "other_fb.nemo", nemo_config(), state)
    assert main(["convert", "nemo", str(tmp_path / "other_fb.nemo"), "--out", str(tmp_path / "m.pt")]) == 1
    assert "mel filterbank (preprocessor.featurizer.fb) differs" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(("setting", "value"), [("mag_power", 1.0), ("exact_pad", True), ("mel_norm", None)])
def test_nemo_feature_settings_audiosep_does_not_reproduce_are_refused(setting, value):
    """Accepted and ignored: up to 0.89 from NeMo's features (reviewer, against a float64 NeMo front end)."""
    from audiosep.convert.nemo import features_from_nemo
    from audiosep.errors import UserError

    with pytest.raises(UserError, match=f"unsupported NeMo preprocessor setting {setting}="):
        features_from_nemo(nemo_config()["preprocessor"] | {setting: value})


def test_nemo_window_sizes_are_truncated_to_samples_as_nemo_does():
    """NeMo takes int(window_size * rate) samples (22.05 kHz, 15 ms: 330) and accepts n_window_size/_stride in
    samples; audiosep rounded (331) and ignored the sample counts (0.064 and 1.65 off, reviewer)."""
    from audiosep.convert.nemo import features_from_nemo
    from audiosep.errors import UserError

    base = nemo_config()["preprocessor"]
    at_22k = features_from_nemo(base | {"sample_rate": 22050, "window_size": 0.015, "window_stride": 0.0105})
    assert (at_22k.win_length, at_22k.hop_length) == (int(0.015 * 22050), int(0.0105 * 22050)) == (330, 231)
    counted = {k: v for k, v in base.items() if k not in ("window_size", "window_stride")}
    in_samples = features_from_nemo(counted | {"n_window_size": 400, "n_window_stride": 160})
    assert (in_samples.win_length, in_samples.hop_length, in_samples.n_fft) == (400, 160, 512)
    with pytest.raises(UserError, match="both window_size and n_window_size are set"):
        features_from_nemo(base | {"n_window_size": 400})
