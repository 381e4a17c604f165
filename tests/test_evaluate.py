"""``audiosep evaluate``: metrics against references, reports, the WER cascade, resume, bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from mir_eval.separation import bss_eval_sources
from signal_helpers import harmonic_tone

from audiosep.asr_metadata import asr_metadata
from audiosep.checkpoint import save_model
from audiosep.cli import main
from audiosep.data.tokenizer import CharTokenizer
from audiosep.errors import UserError
from audiosep.eval_report import error_rates, summarise, to_markdown
from audiosep.evaluation import input_snr_db, load_transcripts, overlap_ratio, perceptual_scores, source_ids
from audiosep.losses import si_snr
from audiosep.metrics import SILENT_SOURCE_DB, bss_sdr, separation_scores
from audiosep.models import conv_tasnet_demo
from audiosep.models.quartznet import QuartzNet
from audiosep.nn.features import LogMelFeatures

RATE = 8000
QUARTZNET_TINY = [[16, 5, 1, 2, 1, False], [16, 7, 2], [16, 9, 1, 1, 2, False], [32, 1, 1, 1, 1, False, False]]


# ---------------------------------------------------------------- metrics against references


def _speechlike_pair(seed: int, length: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([harmonic_tone(rng, length, RATE) for _ in range(2)]).astype(np.float64)


@pytest.mark.parametrize("kind", ["random", "speechlike"])
def test_sdr_matches_mir_eval_within_a_hundredth_of_a_db_in_one_batch(kind: str) -> None:
    rng = np.random.default_rng(1)
    lengths = [4000, 6400, 9000]
    batch_est, batch_ref, expected = [], [], []
    for k, length in enumerate(lengths):
        ref = rng.standard_normal((2, length)) if kind == "random" else _speechlike_pair(k, length)
        # estimate: filtered target + interference + noise, so that every BSS-Eval term is non-trivial
        est = np.stack([np.convolve(r, [0.9, 0.3, -0.1], mode="same") for r in ref])
        est += (0.1 + 0.4 * k) * ref[::-1] + 0.05 * rng.standard_normal(ref.shape) * ref.std()
        expected.append(bss_eval_sources(ref, est, compute_permutation=False)[0])
        batch_est.append(np.pad(est, ((0, 0), (0, max(lengths) - length))))
        batch_ref.append(np.pad(ref, ((0, 0), (0, max(lengths) - length))))
    # padded utterances of three lengths in one batched call, in float32 as models give them
    ours = bss_sdr(torch.tensor(np.stack(batch_est), dtype=torch.float32), torch.tensor(np.stack(batch_ref)))
    np.testing.assert_allclose(ours.numpy(), np.stack(expected), atol=0.01)
    assert np.ptp(np.stack(expected)) > 1.0  # the cases differ, so a constant could not pass


def test_sdr_of_a_scaled_reference_is_very_high_and_of_noise_very_low() -> None:
    ref = torch.from_numpy(_speechlike_pair(3, 4000))
    assert (bss_sdr(0.5 * ref, ref) > 60).all()
    assert (bss_sdr(torch.randn(2, 4000, dtype=torch.float64), ref) < 0).all()


def test_sdr_is_taken_under_its_own_best_permutation_where_si_snr_picks_another() -> None:
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((2, 8000))
    # estimate 0 is reference 0 delayed by 50 samples (the SDR filter undoes it, SI-SNR cannot);
    # estimate 1 is reference 0 plus half of reference 1: SI-SNR pairs it with reference 0, SDR with 1
    est = np.stack([np.roll(ref[0], 50), ref[0] + 0.5 * ref[1]]) + 0.05 * rng.standard_normal((2, 8000))
    scores = separation_scores(
        torch.tensor(est, dtype=torch.float32)[None], torch.tensor(ref)[None], torch.tensor(ref.sum(0))[None], with_sdr=True
    )
    assert scores.perm.tolist() == [[1, 0]]
    identity = bss_eval_sources(ref, est, compute_permutation=False)[0].mean()
    swapped = bss_eval_sources(ref, est[::-1].copy(), compute_permutation=False)[0].mean()
    assert identity > swapped + 5
    np.testing.assert_allclose(float(scores.sdr[0]), identity, atol=0.01)


def test_a_silent_estimate_scores_the_floor_in_both_metrics_and_is_counted() -> None:
    rng = np.random.default_rng(5)
    ref = torch.from_numpy(_speechlike_pair(5, 4000)).float()
    est = torch.stack([ref[1] + 0.1 * torch.from_numpy(rng.standard_normal(4000)).float(), torch.zeros(4000)])
    scores = separation_scores(est[None], ref[None], ref.sum(0)[None], with_sdr=True)
    assert scores.perm.tolist() == [[1, 0]] and scores.silent.tolist() == [1]
    live = float(si_snr(est[0], ref[1]))
    np.testing.assert_allclose(float(scores.si_snr[0]), (live + SILENT_SOURCE_DB) / 2, atol=1e-4)
    live_sdr = bss_eval_sources(ref[1:].double().numpy(), est[:1].double().numpy())[0][0]
    np.testing.assert_allclose(float(scores.sdr[0]), (live_sdr + SILENT_SOURCE_DB) / 2, atol=0.01)
    rows = [{"id": "a", "duration_s": 0.5, "si_snr": 1.0, "silent_sources": 1}, {"id": "b", "duration_s": 0.5, "si_snr": 2.0}]
    summary = summarise(rows, {"data_dir": "d", "split": "test", "task": "sep_clean"}, 1.0)
    assert summary["silent_estimates"] == 1
    assert "1 estimated source(s) were silent" in to_markdown(summary)


def test_an_all_zero_reference_is_refused_by_sdr() -> None:
    with pytest.raises(ValueError, match="all zeros"):
        bss_sdr(torch.randn(2, 1000), torch.zeros(2, 1000))


@pytest.mark.parametrize("with_sdr", [False, True])
def test_an_all_zero_reference_is_refused_by_the_scores_with_or_without_sdr(with_sdr: bool) -> None:
    """Validation calls ``separation_scores`` without SDR: a silent source must not give a finite score."""
    reference = torch.stack([torch.randn(1000), torch.zeros(1000)]).unsqueeze(0)
    estimate = reference + 0.01 * torch.randn_like(reference)
    with pytest.raises(ValueError, match="separation_scores: a reference signal is all zeros"):
        separation_scores(estimate, reference, reference.sum(1), with_sdr=with_sdr)


def test_sdr_refuses_estimates_of_another_length() -> None:
    reference = torch.randn(2, 1000)
    with pytest.raises(ValueError, match="estimate has 1200 samples, reference 1000"):
        bss_sdr(torch.randn(2, 1200), reference)


def test_input_snr_and_overlap_ratio_on_crafted_sources() -> None:
    t = torch.arange(RATE) / RATE
    tone = torch.sin(2 * torch.pi * 200 * t)
    first = torch.cat([tone, torch.zeros(RATE)])  # speaks in the first second
    second = 0.1 * torch.cat([torch.zeros(RATE // 2), tone, torch.zeros(RATE // 2)])  # 0.5-1.5 s, -20 dB
    sources = torch.stack([first, second])
    assert input_snr_db(sources) == pytest.approx(-20.0, abs=0.01)
    # active: first 0-1 s, second 0.5-1.5 s -> both 0.5 s out of 1.5 s of speech
    assert overlap_ratio(sources, RATE) == pytest.approx(1 / 3, abs=0.02)
    assert overlap_ratio(torch.stack([first, torch.zeros(2 * RATE)]), RATE) == 0.0


def test_error_rates_are_corpus_level_and_score_the_mixture_against_every_speaker() -> None:
    rows = [
        {"references": ["a b c d", "e f"], "hyp_mixture": "a b e", "hyp_separated": ["a x c d", "e f"],
         "hyp_clean": ["a b c d", "e f"]},
        {"references": ["g h", "i j k l"], "hyp_mixture": "", "hyp_separated": ["g", "i j k l m"],
         "hyp_clean": ["g h", "i j k"]},
    ]
    rates = error_rates(rows)
    # separated: 1 (x for b) + 0 + 1 (h deleted) + 1 (m inserted) = 3 errors over 12 words
    assert rates["separated"]["wer"] == pytest.approx(100 * 3 / 12, abs=0.01)
    # clean: one deletion (l) over 12 words
    assert rates["clean"]["wer"] == pytest.approx(100 * 1 / 12, abs=0.01)
    # mixture: its one transcript against each speaker's reference (word edit distance, float-free)
    def edits(h: list[str], r: list[str]) -> int:
        d = list(range(len(r) + 1))
        for i, hw in enumerate(h, 1):
            prev, d[0] = d[0], i
            for j, rw in enumerate(r, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (hw != rw))
        return d[-1]
    mixture_errors = sum(edits(h.split(), r.split()) for h, r in
                         [("a b e", "a b c d"), ("a b e", "e f"), ("", "g h"), ("", "i j k l")])
    assert rates["mixture"]["wer"] == pytest.approx(100 * mixture_errors / 12, abs=0.01)
    assert rates["clean"]["cer"] < rates["separated"]["cer"]


def test_pesq_and_stoi_equal_their_packages_functions() -> None:
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    ref = _speechlike_pair(4, 2 * RATE).astype(np.float32)
    est = ref + 0.05 * np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    ours = perceptual_scores(torch.from_numpy(est), torch.from_numpy(ref), RATE)
    expected_pesq = np.mean([pesq.pesq(RATE, r, e, "nb") for r, e in zip(ref, est, strict=True)])
    expected_stoi = np.mean([pystoi.stoi(r, e, RATE) for r, e in zip(ref, est, strict=True)])
    assert ours["pesq"] == pytest.approx(expected_pesq, abs=1e-4)
    assert ours["stoi"] == pytest.approx(expected_stoi, abs=1e-4)


def test_source_ids_and_transcripts_from_librispeech_and_manifests(tmp_path: Path) -> None:
    assert source_ids("103-1240-0000_19-198-0001", 2) == ["103-1240-0000", "19-198-0001"]
    with pytest.raises(UserError, match="does not name 3"):
        source_ids("103-1240-0000_19-198-0001", 3)
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "103" / "1240"
    chapter.mkdir(parents=True)
    (chapter / "103-1240.trans.txt").write_text("103-1240-0000 HELLO WORLD\n103-1240-0001 GOOD BYE\n")
    assert load_transcripts(tmp_path / "LibriSpeech") == {"103-1240-0000": "HELLO WORLD", "103-1240-0001": "GOOD BYE"}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "/x/7-0003.wav", "duration": 1.0, "text": "hi there"}) + "\n")
    assert load_transcripts(manifest) == {"7-0003": "hi there"}
    with pytest.raises(UserError, match="not found"):
        load_transcripts(tmp_path / "missing")


def test_an_utterance_id_with_two_transcripts_is_refused(tmp_path: Path) -> None:
    """The last text read won: WER against the wrong reference, silently (reviewer)."""
    line = {"audio_filepath": "/a/7-0003.wav", "duration": 1.0, "text": "hi there"}
    first, second = tmp_path / "manifests" / "a.jsonl", tmp_path / "manifests" / "b.jsonl"
    first.parent.mkdir()
    first.write_text(json.dumps(line) + "\n")
    second.write_text(json.dumps(line) + "\n")  # the same text again: harmless
    assert load_transcripts(first.parent) == {"7-0003": "hi there"}
    second.write_text(json.dumps(line | {"text": "completely different words"}) + "\n")
    with pytest.raises(UserError, match=f"{second}: utterance '7-0003' has another transcript in {first}"):
        load_transcripts(first.parent)
    both = tmp_path / "one.jsonl"  # two files of one stem in one manifest
    both.write_text(json.dumps(line) + "\n" + json.dumps(line | {"audio_filepath": "/b/7-0003.wav", "text": "no"}) + "\n")
    with pytest.raises(UserError, match="utterance '7-0003' has another transcript"):
        load_transcripts(both)
    for speaker, text in (("103", "HELLO"), ("104", "BYE")):  # one id in two chapters
        chapter = tmp_path / "LibriSpeech" / speaker / "1"
        chapter.mkdir(parents=True)
        (chapter / f"{speaker}-1.trans.txt").write_text(f"100-1-0000 {text}\n")
    with pytest.raises(UserError, match="utterance '100-1-0000' has another transcript"):
        load_transcripts(tmp_path / "LibriSpeech")


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def sep_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sep") / "model.ckpt"
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=2), path, {"sample_rate": RATE})
    return path


@pytest.fixture(scope="module")
def asr_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = QuartzNet(64, 29, QUARTZNET_TINY)
    with torch.no_grad():
        model.head.weight.mul_(20)  # sharp posteriors, so transcripts are not all empty
    path = tmp_path_factory.mktemp("asr") / "asr.ckpt"
    save_model(model, path, asr_metadata(LogMelFeatures(sample_rate=RATE), CharTokenizer().vocabulary))
    return path


@pytest.fixture()
def librimix(tiny_librimix: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny Libri2Mix (tests below damage it)."""
    return Path(shutil.copytree(tiny_librimix, tmp_path / "Libri2Mix"))


def _rows(out_dir: Path) -> list[dict]:
    with (out_dir / "scores.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_every_report_with_scores_matching_the_references(sep_ckpt: Path, librimix: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out),
                 "--no-progress"]) == 0
    for name in ("scores.csv", "summary.json", "report.md", "si_snri_hist.png", "si_snri_vs_input.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _rows(out)
    assert len(rows) == 3  # the tiny test split
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["sdri"] == pytest.approx(np.mean([float(r["sdri"]) for r in rows]), abs=1e-3)
    # the first row's SDR recomputed with mir_eval from the files and a fresh separation
    from audiosep.inference import Separator

    base = librimix / "wav8k" / "min" / "test"
    mixture_id = rows[0]["id"]
    mixture = torch.from_numpy(sf.read(base / "mix_clean" / f"{mixture_id}.wav", dtype="float32")[0])
    refs = np.stack([sf.read(base / f"s{k}" / f"{mixture_id}.wav")[0] for k in (1, 2)])
    estimate = Separator.from_checkpoint(sep_ckpt).separate_at_model_rate(mixture).double().numpy()
    sdr, _, _, _ = bss_eval_sources(refs, estimate)  # mir_eval picks the permutation by SIR
    assert float(rows[0]["sdr"]) == pytest.approx(sdr.mean(), abs=0.05)
    report = (out / "report.md").read_text()
    assert re.search(r"\| si_snri \| -?\d+\.\d{3} \| dB \| \d+ \|", report)  # units: dB beside STOI's 0-1


def test_cascade_reports_wer_for_mixture_separated_and_clean(sep_ckpt: Path, asr_ckpt: Path, librimix: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    words = ["alpha beta", "gamma delta epsilon", "zeta eta", "theta", "iota kappa", "lambda mu nu"]
    with (librimix / "wav8k" / "min" / "metadata" / "mixture_test_mix_clean.csv").open() as handle:
        ids = [row["mixture_ID"] for row in csv.DictReader(handle)]
    utterances = [u for mixture_id in ids for u in mixture_id.split("_")]
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"/a/{u}.wav", "duration": 1.0,
                                            "text": words[k % len(words)]}) + "\n" for k, u in enumerate(utterances)))
    out = tmp_path / "cascade"
    assert main(["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out),
                 "--asr", str(asr_ckpt), "--librispeech", str(manifest), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["asr"]) == {"mixture", "separated", "clean"}
    assert all(0 <= v["wer"] for v in summary["asr"].values())
    assert (out / "wer.png").stat().st_size > 0
    first = json.loads((out / "utterances.jsonl").read_text().splitlines()[0])
    assert len(first["hyp_separated"]) == len(first["hyp_clean"]) == len(first["references"]) == 2
    assert "WER separated" in capsys.readouterr().out


def test_librispeech_style_references_are_scored_after_the_recognisers_normalisation(
        sep_ckpt: Path, asr_ckpt: Path, librimix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LibriSpeech transcripts are upper case, a recogniser's vocabulary lower case: a perfect transcript is 0 % WER."""
    from audiosep.transcriber import Transcriber

    with (librimix / "wav8k" / "min" / "metadata" / "mixture_test_mix_clean.csv").open() as handle:
        utterances = [u for row in csv.DictReader(handle) for u in row["mixture_ID"].split("_")]
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("".join(f"{u} HELLO,  WORLD!\n" for u in utterances))
    monkeypatch.setattr(Transcriber, "transcribe", lambda self, waveforms: ["hello world"] * len(waveforms))
    out = tmp_path / "cascade"
    assert main(["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out),
                 "--asr", str(asr_ckpt), "--librispeech", str(tmp_path / "LibriSpeech"), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["asr"] == {c: {"wer": 0.0, "cer": 0.0} for c in ("mixture", "separated", "clean")}


def test_a_reference_with_no_word_in_the_vocabulary_is_refused_before_any_work() -> None:
    from audiosep.data.tokenizer import CharTokenizer
    from audiosep.evaluation import references_for

    normalize = CharTokenizer().normalize
    assert references_for("1-2-3_4-5-6", 2, {"1-2-3": "IT'S ME", "4-5-6": "Café-au-lait"}, normalize) == [
        "it's me", "cafe au lait"]  # fmt: skip
    with pytest.raises(UserError, match=r"mixture 1-2-3_4-5-6: the transcript of 4-5-6 has no word"):
        references_for("1-2-3_4-5-6", 2, {"1-2-3": "A", "4-5-6": "?!"}, normalize)


def test_a_killed_run_resumes_where_it_stopped_and_a_torn_line_is_dropped(sep_ckpt: Path, librimix: Path,
                                                                          tmp_path: Path) -> None:
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert main([*args, "--out-dir", str(full)]) == 0
    assert main([*args, "--out-dir", str(partial), "--limit", "2"]) == 0
    with (partial / "utterances.jsonl").open("a") as handle:
        handle.write('{"id": "torn-by-a-kill", "si_sn')  # a kill in the middle of a write
    assert main([*args, "--out-dir", str(partial)]) == 0
    summary = json.loads((partial / "summary.json").read_text())
    assert summary["scored_this_run"] == 1 and summary["utterances"] == 3
    assert _rows(partial) == _rows(full)
    assert "torn" not in (partial / "utterances.jsonl").read_text()


def test_a_resumed_row_whose_audio_changed_is_scored_again(sep_ckpt: Path, librimix: Path, tmp_path: Path) -> None:
    """A mixture's files replaced by other audio of the same length kept their old scores on a rerun (reviewer)."""
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    out = tmp_path / "eval"
    assert main([*args, "--out-dir", str(out)]) == 0
    before = _rows(out)
    split = librimix / "wav8k" / "min" / "test"
    changed = sorted((split / "mix_clean").iterdir())[1]
    s1, s2 = (sf.read(split / f"s{i}" / changed.name, dtype="float32")[0] for i in (1, 2))
    s1 = np.roll(s1, len(s1) // 3) * 0.5  # other audio, same length; the mixture still their sum
    sf.write(split / "s1" / changed.name, s1, RATE, subtype="FLOAT")
    sf.write(split / "mix_clean" / changed.name, s1 + s2, RATE, subtype="FLOAT")
    with pytest.warns(UserWarning, match=rf"1 mixture\(s\) scored before have changed files since \(e.g. {changed.stem}\)"):
        assert main([*args, "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored_this_run"] == 1 and summary["utterances"] == 3
    fresh = tmp_path / "fresh"
    assert main([*args, "--out-dir", str(fresh)]) == 0
    assert _rows(out) == _rows(fresh) and _rows(out) != before
    assert len((out / "utterances.jsonl").read_text().splitlines()) == 3  # the stale row is gone, not shadowed


def test_rows_written_without_file_stamps_are_scored_again_saying_why(sep_ckpt: Path, librimix: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """Rows of an older audiosep hold no stamps: they were rescored under "have changed files" (reviewer)."""
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    out = tmp_path / "eval"
    assert main([*args, "--out-dir", str(out), "--limit", "2"]) == 0
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    (out / "utterances.jsonl").write_text("".join(json.dumps({k: v for k, v in row.items() if k != "audio_stamp"}) + "\n"
                                                  for row in rows))  # fmt: skip
    with pytest.warns(UserWarning, match=r"2 mixture\(s\) scored before hold no file stamps") as caught:
        assert main([*args, "--out-dir", str(out)]) == 0
    assert not [w for w in caught if "have changed files" in str(w.message)]
    assert json.loads((out / "summary.json").read_text())["scored_this_run"] == 3


def test_results_of_another_model_are_never_mixed_in(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    args = ["--data", str(librimix), "--out-dir", str(out), "--no-progress", "--no-plots"]
    assert main(["evaluate", "--ckpt", str(sep_ckpt), *args, "--limit", "1"]) == 0
    other = tmp_path / "other.ckpt"
    torch.manual_seed(1)
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=2), other, {"sample_rate": RATE})
    assert main(["evaluate", "--ckpt", str(other), *args]) == 1
    assert "different evaluation" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(other), *args, "--restart"]) == 0
    assert json.loads((out / "summary.json").read_text())["scored_this_run"] == 3


def test_rows_without_their_run_file_are_not_resumed_under_another_model(
    sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval"
    args = ["--data", str(librimix), "--out-dir", str(out), "--no-progress", "--no-plots"]
    assert main(["evaluate", "--ckpt", str(sep_ckpt), *args, "--limit", "2"]) == 0
    (out / "run.json").unlink()
    other = tmp_path / "other.ckpt"
    save_model(conv_tasnet_demo(num_repeats=1, num_layers=2), other, {"sample_rate": RATE})
    assert main(["evaluate", "--ckpt", str(other), *args]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "different evaluation" in error[0] and "run.json is missing" in error[0]
    assert len((out / "utterances.jsonl").read_text().splitlines()) == 2  # kept for the right run


def test_rows_scored_by_other_audiosep_code_are_not_resumed(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """An editable install keeps its version through edits: a rerun after one mixed scores of two codes (reviewer)."""
    import audiosep.io

    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress",
            "--no-plots"]  # fmt: skip
    assert main([*args, "--limit", "1"]) == 0
    real = audiosep.io.source_digest
    monkeypatch.setattr(audiosep.io, "source_digest", lambda: "edited" + real()[6:])
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "dtype or audiosep's code differ" in error[0]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "a", "si_snr": 1.0}', "line 2: duration_s is None, not a finite number"),
        ('{"id": "a", "duration_s": 1.0, "si_snr": 1.0, "si_snri": "high"}', "line 2: si_snri is 'high', not a finite number"),
        ('["a"]', "line 2: not an object with a string id"),
        ("{damaged", "line 2: not JSON"),
        pytest.param('{"id": "a", "z": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 2: nested too deeply to be a row",
                     id="nested-100000-deep"),
    ],
)
def test_a_damaged_row_is_refused_naming_its_line_not_cut_off_with_the_rows_after_it(
    sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture, line: str, problem: str
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress",
            "--no-plots"]  # fmt: skip
    assert main([*args, "--limit", "1"]) == 0
    rows = out / "utterances.jsonl"
    good = rows.read_text()
    rows.write_text(good + line + "\n" + good)
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"utterances.jsonl: {problem}" in error[0]
    assert rows.read_text() == good + line + "\n" + good


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"si_snri": None}, "si_snri is None, not a finite number"),  # deleted: a mean of 2 rows reported as of 3
        ({"input_snr_db": "abc"}, "input_snr_db is 'abc', not a number"),  # written into scores.csv
        ({"overlap_ratio": float("nan")}, "overlap_ratio is nan, not a finite number"),
        ({"silent_sources": -1}, "silent_sources is -1, not a count"),
        ({"silent_sources": float("inf")}, "silent_sources is inf, not a count"),  # an OverflowError (diff review)
        ({"references": ["a b", "c"], "hyp_mixture": 3}, "its references and hypotheses are not texts"),
    ],
)
def test_a_resumed_row_lacking_a_score_or_with_a_wrong_type_is_refused(
    sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit: dict, problem: str
) -> None:
    """A row without si_snri, or with input_snr_db "abc", ended in a traceback, or with --no-plots in a report
    over fewer rows than it counted (reviewer)."""
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress",
            "--no-plots"]  # fmt: skip
    assert main([*args, "--limit", "1"]) == 0
    rows = out / "utterances.jsonl"
    row = json.loads(rows.read_text())
    edited = {key: value for key, value in (row | edit).items() if value is not None}
    rows.write_text(json.dumps(edited) + "\n")
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"utterances.jsonl: line 1: {problem}" in error[0]


def test_the_progress_bar_is_shown_on_a_terminal_only(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """tqdm frames went into files and pipes that stderr was redirected to (reviewer)."""
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(tmp_path), "--no-plots",
            "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    assert "evaluating" not in capsys.readouterr().err  # pytest's capture is not a terminal


def test_a_run_file_that_is_a_folder_is_one_error_line(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    (out / "run.json").mkdir(parents=True)
    assert main(["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out),
                 "--no-progress"]) == 1  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "run.json: exists and is not a file" in error[0]


def test_csv_text_a_spreadsheet_would_run_as_a_formula_is_quoted() -> None:
    from audiosep.eval_report import to_csv

    rows = [{"id": "=HYPERLINK(1)_b", "duration_s": 1.0, "si_snr": -3.25}, {"id": "a_b", "duration_s": 2.0}]
    lines = to_csv(rows).splitlines()
    assert lines[1].startswith("'=HYPERLINK(1)_b,1.0,-3.25") and lines[2].startswith("a_b,2.0")


def test_bad_input_gives_one_line_naming_the_problem(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    base = librimix / "wav8k" / "min" / "test"
    victim = sorted((base / "mix_clean").glob("*.wav"))[0]
    audio, rate = sf.read(victim, dtype="float32")
    audio[10] = np.nan
    sf.write(victim, audio, rate, subtype="FLOAT")
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress"]
    assert main([*args, "--out-dir", str(tmp_path / "a")]) == 1
    assert f"{victim}: 1 NaN or infinite samples in frames 0..{len(audio)}" in capsys.readouterr().err  # the file
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--split", "nope"]) == 1
    assert "split folder not found" in capsys.readouterr().err
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--device", "banana"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--device 'banana': not a torch device" in error[0]
    assert main([*args, "--out-dir", str(tmp_path / "c"), "--asr", str(sep_ckpt), "--librispeech", str(tmp_path)]) == 1
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "b" / "summary.json").exists()


def test_a_silent_source_a_file_as_out_dir_and_a_damaged_run_file_are_refused(sep_ckpt: Path, librimix: Path,
                                                                             tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main([*args, "--out-dir", str(not_a_folder)]) == 1
    assert "is not a folder" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert main([*args, "--out-dir", str(out), "--limit", "1"]) == 0
    (out / "run.json").write_text("{not json")
    assert main([*args, "--out-dir", str(out)]) == 1
    assert "different evaluation" in capsys.readouterr().err
    victim = sorted((librimix / "wav8k" / "min" / "test" / "s2").glob("*.wav"))[-1]
    audio, rate = sf.read(victim, dtype="float32")
    sf.write(victim, np.zeros_like(audio), rate, subtype="FLOAT")
    assert main([*args, "--out-dir", str(tmp_path / "silent")]) == 1
    mixture_file = victim.parent.parent / "mix_clean" / victim.name  # the error named only the id (reviewer)
    assert (f"audiosep: error: {mixture_file}: mixture {victim.stem}: source s2 is silent, so SI-SNR and SDR are "
            "undefined; the 2 mixture(s) scored so far are kept in the output folder: a rerun resumes after it is "
            "fixed") in capsys.readouterr().err  # fmt: skip
    # the rows scored before the bad mixture are kept for the rerun
    assert len((tmp_path / "silent" / "utterances.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("limit", [0, -1])
def test_the_library_refuses_a_limit_below_one(limit: int, tmp_path: Path) -> None:
    from audiosep.errors import UserError
    from audiosep.evaluation import evaluate

    with pytest.raises(UserError, match=f"limit must be at least 1, got {limit}"):
        evaluate(None, None, tmp_path, None, limit=limit)  # type: ignore[arg-type]  # refused before any use
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- review findings (stop 25)


def test_si_snr_scores_do_not_depend_on_the_level_and_are_not_capped_by_float32() -> None:
    """One estimate at any gain scores the same (the float32 loss with eps 1e-8 on the energies scored a 40 dB
    estimate 18 dB at an rms of 5e-6), and a 100 dB estimate scores 100 dB, against a float64 formula."""
    from audiosep.metrics import scored_si_snr

    rng = np.random.default_rng(0)
    reference = torch.from_numpy(rng.standard_normal((1, 1, 4000)))
    noise = torch.from_numpy(rng.standard_normal((1, 1, 4000)))
    for snr_db in (40.0, 100.0):
        estimate = reference + noise * 10 ** (-snr_db / 20)
        s, e = reference - reference.mean(), estimate - estimate.mean()
        target = (e * s).sum() / (s * s).sum() * s
        expected = float(10 * torch.log10((target**2).sum() / ((e - target) ** 2).sum()))
        for gain in (1.0, 1e-3, 1e-6):
            mixture = (gain * reference).float()[:, 0]
            scores = separation_scores((gain * estimate).float(), (gain * reference).float(), mixture)
            assert float(scored_si_snr((gain * estimate).float(), (gain * reference).float())) == pytest.approx(
                expected, abs=0.05)  # float32 inputs: the estimate's own rounding at 100 dB
            assert float(scores.si_snr[0]) == pytest.approx(expected, abs=0.05)


def test_a_mixture_written_twice_counts_once_and_a_second_run_on_the_folder_is_refused(
        sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two runs at once on one --out-dir appended the same rows; the next report counted them twice."""
    from audiosep.io import folder_lock

    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress",
            "--no-plots"]
    assert main(args) == 0
    lines = (out / "utterances.jsonl").read_text().splitlines(keepends=True)
    (out / "utterances.jsonl").write_text("".join(lines + lines[:2]))  # what a concurrent run left
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utterances"] == 3 and summary["scored_this_run"] == 0 and len(_rows(out)) == 3
    with folder_lock(out, "--out-dir"):  # a run still writing there
        assert main(args) == 1
    assert "in use by a running audiosep command (pid" in capsys.readouterr().err
    assert main(args) == 0  # released


def test_a_restarted_run_that_stops_early_leaves_no_report_of_the_run_before(
        sep_ckpt: Path, librimix: Path, tmp_path: Path) -> None:
    """--restart kept summary.json, scores.csv and report.md of the previous run beside the new rows."""
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress"]
    assert main(args) == 0
    assert (out / "summary.json").is_file() and (out / "si_snri_hist.png").is_file()
    mixture_id = json.loads((out / "utterances.jsonl").read_text().splitlines()[1])["id"]
    source = librimix / "wav8k" / "min" / "test" / "s1" / f"{mixture_id}.wav"
    sf.write(source, np.zeros(sf.info(source).frames, "float32"), RATE)  # the second mixture fails: silent source
    assert main([*args, "--restart"]) == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["run.json", "utterances.jsonl"]


def test_pesq_and_its_mixture_baseline_are_averaged_over_the_same_mixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PESQ finds no speech in an estimate, the row drops pesq_mixture too (the mean over the other rows
    beside a mean over all rows would not compare), and the summary says over how many mixtures."""
    import audiosep.evaluation as evaluation

    class Separator:
        sample_rate, num_sources = RATE, 2

        def check_length(self, *args: object) -> None:
            pass

        def separate_at_model_rate(self, mixture: torch.Tensor) -> torch.Tensor:
            return torch.stack([mixture, torch.zeros_like(mixture)])

    def fake_perceptual(estimate: torch.Tensor, reference: torch.Tensor, rate: int) -> dict[str, float]:
        silent = bool((estimate.abs().amax(-1) == 0).any())
        return {"stoi": 0.5} if silent else {"pesq": 2.0, "stoi": 0.7}  # PESQ refuses the silent estimate

    monkeypatch.setattr(evaluation, "perceptual_scores", fake_perceptual)
    rng = np.random.default_rng(0)
    sources = torch.from_numpy(np.stack([harmonic_tone(rng, 4000, RATE) for _ in range(2)]))
    row = evaluation.score_utterance(Separator(), sources.sum(0), sources, "a_b")
    assert row["stoi"] == 0.5 and row["stoi_mixture"] == 0.7
    assert "pesq" not in row and "pesq_mixture" not in row
    other = {**row, "id": "c_d", "pesq": 3.0, "pesq_mixture": 2.5}
    summary = summarise([row, other], {"data_dir": "d", "split": "test", "task": "sep_clean"}, 1.0)
    assert summary["mean_over"]["pesq"] == summary["mean_over"]["pesq_mixture"] == 1
    assert summary["mean_over"]["stoi"] == 2
    assert "| pesq | 3.000 | MOS 1-4.5 | 1 |" in to_markdown(summary)


def test_spaces_a_ctc_decoder_leaves_are_no_character_errors() -> None:
    rows = [{"references": ["hi there"], "hyp_mixture": " hi  there ", "hyp_separated": [" hi  there "],
             "hyp_clean": ["hi there"]}]
    rates = error_rates(rows)
    assert rates["separated"] == rates["clean"] == {"wer": 0.0, "cer": 0.0}


def test_a_restart_refused_for_a_missing_transcript_leaves_the_previous_run_whole(
        sep_ckpt: Path, asr_ckpt: Path, librimix: Path, tmp_path: Path) -> None:
    """--restart cleared the rows and rewrote run.json before the transcripts were checked: a missing one left the
    old run's scores.csv and summary.json beside a run.json naming the new run, and no rows."""
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--out-dir", str(out), "--no-progress"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")  # none of the mixtures' utterances
    assert main([*args, "--restart", "--asr", str(asr_ckpt), "--librispeech", str(tmp_path / "LibriSpeech")]) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before


def test_references_that_lose_digits_or_letters_to_normalisation_are_warned_about() -> None:
    """"CHAPTER 12 BEGINS" was scored as "chapter begins" without a word: a perfect "chapter twelve begins" is 33 %."""
    from audiosep.data.tokenizer import CharTokenizer, dropped_characters
    from audiosep.evaluation import warn_dropped_characters

    vocabulary = CharTokenizer().vocabulary
    assert dropped_characters("CHAPTER 12 BEGINS", vocabulary) == {"1", "2"}
    assert dropped_characters("Café-au-lait, IT'S", vocabulary) == set()
    with pytest.warns(UserWarning, match=r"1 reference transcript\(s\) hold letters or digits .*'12'"):
        warn_dropped_characters(["1-2-3_4-5-6"], 2, {"1-2-3": "CHAPTER 12", "4-5-6": "HELLO"}, vocabulary)


def test_a_constant_source_file_is_named_as_the_reason() -> None:
    from audiosep.errors import UserError
    from audiosep.evaluation import check_references

    sources = torch.stack([torch.full((100,), 0.01), torch.randn(100)])
    with pytest.raises(UserError, match="mixture m1: source s1 is constant .a DC offset., so SI-SNR is undefined"):
        check_references("m1", sources.sum(0), sources)


@pytest.mark.parametrize("defect", ["another_mixture", "shifted", "s1_is_the_mixture"])
def test_a_clean_mixture_that_is_not_the_sum_of_its_sources_is_refused(
    defect: str, sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A wrong, delayed or swapped file scored a plausible SI-SNRi (3.8, 2.6 and -77 dB; SI-SNRi subtracts the
    mixture's own score) with exit 0 (reviewer); it is refused, naming the mixture."""
    test = librimix / "wav8k" / "min" / "test"
    first, victim = sorted((test / "mix_clean").glob("*.wav"))[:2]
    audio, rate = sf.read(victim, dtype="float32")
    if defect == "another_mixture":
        other, _ = sf.read(first, dtype="float32")
        audio = np.resize(other, audio.shape)
    elif defect == "shifted":
        audio = np.concatenate([np.zeros(rate // 4, np.float32), audio[: -(rate // 4)]])
    else:
        sf.write(test / "s1" / victim.name, audio, rate, subtype="FLOAT")
    sf.write(victim, audio, rate, subtype="FLOAT")
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    assert main([*args, "--out-dir", str(tmp_path / "eval")]) == 1
    assert f"mixture {victim.stem}: is not the sum of its sources" in capsys.readouterr().err


def test_the_sum_check_passes_16_bit_rounding_and_skips_noisy_mixtures() -> None:
    from audiosep.errors import UserError
    from audiosep.evaluation import check_references

    torch.manual_seed(0)
    sources = 0.1 * torch.randn(2, 8000)
    rounded = lambda x: torch.round(x * 32767) / 32767  # noqa: E731 (each file quantised on its own)
    check_references("m", rounded(sources.sum(0)), rounded(sources), clean=True)
    quiet = 3e-4 * torch.randn(2, 8000)  # -70 dBFS: 16-bit rounding alone is ~29 dB of the mixture
    check_references("m", rounded(quiet.sum(0)), rounded(quiet), clean=True)
    noisy = sources.sum(0) + 0.2 * torch.randn(8000)
    check_references("m", noisy, sources)  # sep_noisy: the noise file is not read, so no sum to compare
    with pytest.raises(UserError, match="is not the sum of its sources"):
        check_references("m", noisy, sources, clean=True)


def test_a_truncated_mixture_file_is_named_not_its_intact_sources(sep_ckpt: Path, librimix: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """soundfile reads a WAV cut inside its data as a shorter complete file: the error blamed the intact s1 for
    having more samples than the mixture (reviewer)."""
    victim = sorted((librimix / "wav8k" / "min" / "test" / "mix_clean").glob("*.wav"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(librimix), "--no-progress", "--no-plots"]
    assert main([*args, "--out-dir", str(tmp_path / "eval")]) == 1
    assert f"{victim}: truncated: the header promises" in capsys.readouterr().err


def test_error_rates_of_references_without_words_are_undefined_not_infinite() -> None:
    """torchmetrics divides by zero: inf / NaN in summary.json, which strict JSON cannot hold (reviewer)."""
    rows = [{"references": ["", " "], "hyp_mixture": "a", "hyp_separated": ["a", ""], "hyp_clean": ["", ""]}]
    rates = error_rates(rows)
    assert rates["mixture"]["wer"] is None and rates["clean"]["wer"] is None
    assert rates["clean"]["cer"] is not None  # " " is one character to recognise
    json.dumps(rates, allow_nan=False)
    run = {"data_dir": "d", "split": "test", "task": "sep_clean"}
    summary = {"run": run, "utterances": 1, "audio_s": 1.0, "silent_estimates": 0, "mean": {}, "asr": rates}
    assert "| mixture | n/a | " in to_markdown(summary)


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (lambda s: s.clone(), "sources s1 and s2 are one signal (correlation 1.000)"),
        (lambda s: -0.5 * s, "sources s1 and s2 are one signal (correlation -1.000)"),
        (lambda s: s + 0.01 * torch.randn(8000), "sources s1 and s2 are one signal"),
        (lambda s: 1e-6 * torch.randn(8000), "its sources are 100 dB apart"),
    ],
)
def test_sources_that_make_the_mixtures_own_score_extreme_are_refused(second, says: str) -> None:
    """Two copies of one signal: the mixture scored ~150 dB against each, a good separator's SI-SNRi came out
    near -140 dB and one such mixture moved a set's mean by 50 dB, with no warning (reviewer)."""
    from audiosep.errors import UserError
    from audiosep.evaluation import check_references

    torch.manual_seed(0)
    first = 0.1 * torch.randn(8000)
    sources = torch.stack([first, second(first)])
    with pytest.raises(UserError, match=re.escape(f"mixture m: {says}")):
        check_references("m", sources.sum(0), sources, clean=True)
    check_references("m", sources[0] + 0.1 * torch.randn(8000), torch.stack([first, 0.1 * torch.randn(8000)]))


@pytest.mark.parametrize("mixture", [torch.zeros(8000), torch.full((8000,), 0.3)])
def test_a_silent_or_constant_mixture_is_refused_for_either_task(mixture: torch.Tensor) -> None:
    """sep_noisy took an all-zero mix_both file: its SDR (-300 dB) made that row's SDRi +220 dB (reviewer)."""
    from audiosep.errors import UserError
    from audiosep.evaluation import check_references

    sources = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UserError, match="mixture m: the mixture is silent or constant"):
        check_references("m", mixture, sources)


def test_a_rerun_on_regenerated_metadata_is_another_evaluation(
    sep_ckpt: Path, librimix: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only the data folder's path named the data: rows of the old set were kept beside new ones (reviewer)."""
    data = tmp_path / "data"
    shutil.copytree(librimix, data)
    out = tmp_path / "eval"
    args = ["evaluate", "--ckpt", str(sep_ckpt), "--data", str(data), "--out-dir", str(out), "--no-progress",
            "--no-plots", "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    csv_path = next((data / "wav8k" / "min" / "metadata").glob("mixture_test_mix_clean.csv"))
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # other rows, other order
    capsys.readouterr()
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "different evaluation (checkpoint, data, its metadata" in error[0]
