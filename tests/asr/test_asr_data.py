"""Manifests, duration-bucketed batching, the ASR data module, and the FSDD digit-string builder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

from audiosep.data.asr import ASRDataModule, DurationBucketSampler, read_manifest
from audiosep.data.fsdd import DIGIT_WORDS, FSDDSplits, build_fsdd_asr
from audiosep.errors import UserError


def test_read_manifest_resolves_relative_paths_and_filters(tiny_asr):
    entries = read_manifest(tiny_asr["train"])
    assert len(entries) == 4 and all(
        e.audio_filepath.startswith(str(tiny_asr["train"].parent)) for e in entries
    )
    assert len(read_manifest(tiny_asr["train"], min_duration=0.33, max_duration=0.39)) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"audio_filepath": "a.wav"}', "missing"),
        (b"5", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b'{"audio_filepath": 5, "duration": 1, "text": "a"}', "audio_filepath must be a non-empty string"),
        (b'{"audio_filepath": "a.wav", "duration": "abc", "text": "a"}', "duration must be a finite number"),
        (b'{"audio_filepath": "a.wav", "duration": NaN, "text": "a"}', "duration must be a finite number"),
        (b'{"audio_filepath": "a.wav", "duration": -1, "text": "a"}', "duration must be a finite number"),
        (b'{"audio_filepath": "a.wav", "duration": 1, "text": ["a"]}', "text must be a string"),
        (b'{"audio_filepath": "a.wav", "duration": 1, "text": "\xff"}', "not UTF-8"),
        pytest.param(b'{"audio_filepath": "a.wav", "z": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply",
                     id="nested-100000-deep"),  # a RecursionError traceback (reviewer)
    ],
)
def test_bad_manifest_lines_name_the_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio_filepath": "x.wav", "duration": 1, "text": "a"}\n' + line + b"\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: {message}[^\n]*$"):
        read_manifest(path)


def test_manifest_lines_end_only_at_newlines(tmp_path):
    path = tmp_path / "m.jsonl"
    (tmp_path / "x.wav").touch()
    path.write_text('{"audio_filepath": "x.wav", "duration": 1.5, "text": "a\u2028b"}\n', encoding="utf-8")
    assert [(u.duration, u.text) for u in read_manifest(path)] == [(1.5, "a\u2028b")]


def test_sampler_covers_everything_once_with_limits():
    durations = [0.5 + (i * 37 % 23) / 10 for i in range(101)]
    sampler = DurationBucketSampler(durations, batch_size=8, max_batch_duration=12.0, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(101))
    for batch in batches:
        longest = max(durations[i] for i in batch)
        assert len(batch) <= 8 and (len(batch) == 1 or longest * len(batch) <= 12.0)
    spread = sum(max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches) / len(batches)
    assert spread < 0.6  # buckets hold similar durations (random batches would spread ~2 s)
    sampler.set_epoch(1)
    assert list(sampler) != batches and len(sampler) == len(batches)


def test_sampler_shards_across_ranks_evenly():
    durations = [1.0 + i / 10 for i in range(50)]
    shards = [list(DurationBucketSampler(durations, 4, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert {i for s in shards for b in s for i in b} == set(range(50))


def test_datamodule_batches_resampled_audio(tiny_asr):
    dm = ASRDataModule(tiny_asr["train"], tiny_asr["val"], sample_rate=8000, batch_size=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(texts) for _, _, texts in batches) == 4
    waves, lengths, texts = batches[0]
    assert waves.shape == (len(texts), int(lengths.max())) and waves.dtype == torch.float32
    durations = {
        json.loads(line)["text"]: json.loads(line)["duration"]
        for line in tiny_asr["train"].read_text().splitlines()
    }
    for length, text in zip(lengths.tolist(), texts, strict=True):
        assert length == round(durations[text] * 8000)  # 16 kHz files resampled to 8 kHz


def test_fsdd_builder_is_seeded_and_splits_speakers_and_takes(fsdd_dir, tmp_path):
    splits = FSDDSplits(num_train=6, num_val=2, num_test=2, num_unseen=3, min_digits=3, max_digits=4)
    manifests = build_fsdd_asr(fsdd_dir, tmp_path / "a", splits, seed=1)
    again = build_fsdd_asr(fsdd_dir, tmp_path / "b", splits, seed=1)
    for split, path in manifests.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == [json.loads(line) for line in again[split].read_text().splitlines()]
        assert len(rows) == {"train": 6, "val": 2, "test": 2, "unseen": 3}[split]
        for row in rows:
            words = row["text"].split()
            assert 3 <= len(words) <= 4 and set(words) <= set(DIGIT_WORDS)
            info = sf.info(str(path.parent / row["audio_filepath"]))
            assert info.samplerate == 8000 and row["duration"] == pytest.approx(info.frames / 8000, abs=1e-4)
        speakers = {row["audio_filepath"].split("/")[1].split("_")[0] for row in rows}
        assert (speakers == {"theo"}) == (split == "unseen")


def test_fsdd_builder_rejects_unknown_speaker(fsdd_dir, tmp_path):
    with pytest.raises(ValueError, match="unseen speaker"):
        build_fsdd_asr(fsdd_dir, tmp_path, FSDDSplits(unseen_speaker="nobody"))


def test_a_missing_audio_file_is_named_when_the_manifest_is_read(tmp_path):
    """It was found by the loader, whenever that row's batch came (hours into an epoch) (reviewer)."""
    sf.write(tmp_path / "a.wav", torch.zeros(800).numpy(), 8000)
    path = tmp_path / "m.jsonl"
    rows = [{"audio_filepath": name, "duration": 0.1, "text": "a"} for name in ("a.wav", "gone.wav", "b.wav")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"m.jsonl:2: audio file .*gone.wav not found \(2 of its files missing\)"):
        read_manifest(path)
    assert len(read_manifest(path, audio=False)) == 3  # references only: the text is what is read


def test_a_file_far_longer_than_its_manifest_row_is_refused_when_read(tmp_path):
    """Batches are sized by the rows: a 60 s file listed as 1 s passed max_duration and was batched whole."""
    from audiosep.data.asr import ASRDataset

    sf.write(tmp_path / "long.wav", torch.zeros(8000 * 3).numpy(), 8000)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio_filepath": "long.wav", "duration": 1.0, "text": "a"}) + "\n"
                    + json.dumps({"audio_filepath": "long.wav", "duration": 2.99, "text": "a"}) + "\n")  # fmt: skip
    dataset = ASRDataset(read_manifest(path), 8000)
    with pytest.raises(UserError, match=r"long.wav: 3.00 s of audio, but its manifest row says 1.00 s"):
        dataset[0]
    assert dataset[1][0].shape == (8000 * 3,)  # within rounding of its row: read


@pytest.mark.parametrize(("manifest", "message"), [
    ("\ufeffid,path,speaker,text\n0_a_0,r/0_a_0.wav,a,zero\n", None),  # a BOM: read (it said KeyError: 'id')
    ("id,path,speaker\n0_a_0,r/0_a_0.wav,a\n", "not an FSDD manifest (missing columns ['text'])"),
    ("id,path,speaker,text\n0_a_x,r/0_a_x.wav,a,zero\n", "manifest.csv:2: id '0_a_x' does not end in _TAKE"),
    ("id,path,speaker,text\n0_a_0,/etc/passwd,a,zero\n", "manifest.csv:2: path '/etc/passwd' is not a path inside"),
    ("id,path,speaker,text\n0_a_0,../x.wav,a,zero\n", "manifest.csv:2: path '../x.wav' is not a path inside"),
])  # fmt: skip
def test_a_crafted_fsdd_manifest_is_one_line_and_paths_stay_inside(tmp_path: Path, manifest: str, message: str | None) -> None:
    from audiosep.data.fsdd import read_fsdd
    from audiosep.errors import UserError

    (tmp_path / "manifest.csv").write_text(manifest, encoding="utf-8")
    if message is None:
        [recording] = read_fsdd(tmp_path)
        assert (recording.path, recording.take, recording.text) == (tmp_path / "r/0_a_0.wav", 0, "zero")
        return
    with pytest.raises(UserError, match=re.escape(message)):
        read_fsdd(tmp_path)


def test_fsdd_splits_that_leave_one_empty_are_one_line(fsdd_dir, tmp_path):
    """train_takes=45, val_takes=5 left the test split no take: "integer modulo by zero" (reviewer)."""
    from audiosep.errors import UserError

    with pytest.raises(UserError, match="no FSDD recordings for the test split"):
        build_fsdd_asr(fsdd_dir, tmp_path, FSDDSplits(train_takes=45, val_takes=5, num_train=1, num_val=1, num_unseen=1))
