"""``audiosep evaluate``'s engine: score a separator on a LibriMix split, optionally cascaded into a recogniser.

Per mixture: SI-SNR(i) and SDR(i) (:mod:`audiosep.metrics`), PESQ and STOI when their packages are
installed, the input SNR and overlap ratio of the references (for the plots), and with a recogniser
the transcripts of the mixture, of each separated source (matched to its reference speaker by the
SI-SNR permutation) and of each clean source. Rows are appended to ``utterances.jsonl`` as they are
computed, so a killed run resumes where it stopped; :mod:`audiosep.eval_report` turns them into the
CSV, JSON, markdown and PNG reports.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audiosep.data.asr import read_manifest
from audiosep.data.librispeech import read_transcripts
from audiosep.errors import UserError
from audiosep.eval_report import SCORE_COLUMNS, remove_reports, summarise, write_reports
from audiosep.inference import SeparationError
from audiosep.io import atomic_write_text, folder_lock, read_json
from audiosep.losses import reorder_sources
from audiosep.metrics import separation_scores

ROWS_FILE = "utterances.jsonl"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunIdentity:
    """What makes two evaluation runs the same run (a resumed run must match it exactly)."""

    separator_sha256: str
    recogniser_sha256: str | None
    data_dir: str
    split: str
    task: str
    dtype: str = "fp32"
    metadata_sha256: str | None = None  # the split's metadata CSV: data regenerated at the same path is other data
    audiosep_code: str | None = None  # a digest of audiosep's sources: an editable install keeps its version


# ---------------------------------------------------------------- transcripts


def source_ids(mixture_id: str, num_sources: int) -> list[str]:
    """The utterance ids of a LibriMix mixture id ``<utt1>_<utt2>[_<utt3>]``.

    Raises:
        UserError: the id does not split into ``num_sources`` utterance ids.
    """
    parts = mixture_id.split("_")
    if len(parts) != num_sources or not all(parts):
        raise UserError(f"mixture id {mixture_id!r} does not name {num_sources} source utterances (<id1>_<id2>)")
    return parts


def _merge_transcripts(texts: dict[str, str], origins: dict[str, Path], found: Iterable[tuple[str, str]],
                       where: Path) -> None:  # fmt: skip
    """Add the ``(id, text)`` pairs ``found`` (read from ``where``) to ``texts``; refuse an id that already has
    another text (two files of one stem in one manifest included).

    Why: the last text read won, so a second chapter or manifest with the same id scored WER against
    the wrong reference, silently (reviewer).
    """
    for utterance, text in found:
        if utterance in texts and texts[utterance] != text:
            raise UserError(f"{where}: utterance {utterance!r} has another transcript in {origins[utterance]}; "
                            "references must be unique per id (the audio file's stem)")  # fmt: skip
        texts.setdefault(utterance, text)
        origins.setdefault(utterance, where)


def _manifest_transcripts(paths: Sequence[Path]) -> dict[str, str]:
    """``{utterance id: text}`` of JSON-lines manifests; the id is the audio file's stem."""
    texts: dict[str, str] = {}
    origins: dict[str, Path] = {}
    for path in paths:
        try:
            utterances = read_manifest(path, audio=False)  # the references' text only
        except ValueError as err:
            raise UserError(str(err)) from err
        _merge_transcripts(texts, origins, ((Path(u.audio_filepath).stem, u.text) for u in utterances), path)
    return texts


def _librispeech_transcripts(root: Path) -> dict[str, str]:
    """``{utterance id: text}`` of every ``*.trans.txt`` below ``root``."""
    texts: dict[str, str] = {}
    origins: dict[str, Path] = {}
    for chapter in sorted({t.parent for t in root.rglob("*.trans.txt")}):
        _merge_transcripts(texts, origins, read_transcripts(chapter).items(), chapter)
    return texts


def load_transcripts(source: str | os.PathLike) -> dict[str, str]:
    """Reference transcripts from a LibriSpeech root (its ``*.trans.txt``), a manifest, or a folder of manifests.

    Raises:
        UserError: the path does not exist or holds no transcript, or an id has two different texts.
    """
    path = Path(source).expanduser()
    if path.is_file():
        texts = _manifest_transcripts([path])
    elif path.is_dir():
        texts = _librispeech_transcripts(path) or _manifest_transcripts(sorted(path.glob("*.jsonl")))
    else:
        raise UserError(f"{path}: transcript source not found (a LibriSpeech folder or a .jsonl manifest)")
    if not texts:
        raise UserError(f"{path}: no transcripts found (*.trans.txt files or *.jsonl manifests)")
    return texts


def warn_dropped_characters(mixture_ids: Sequence[str], num_sources: int, transcripts: Mapping[str, str],
                            vocabulary: Sequence[str]) -> None:  # fmt: skip
    """Warn when references lose letters or digits to the recogniser's normalisation.

    Why: "CHAPTER 12 BEGINS" is scored as "chapter begins", so a perfect "chapter twelve begins" counts
    33 % WER; LibriSpeech's transcripts are words only, other corpora's may not be.
    """
    from audiosep.data.tokenizer import dropped_summary

    ids = dict.fromkeys(i for m in mixture_ids for i in source_ids(m, num_sources))  # each speaker's once
    hit, shown = dropped_summary([transcripts[i] for i in ids], vocabulary)
    if hit:
        warnings.warn(f"{hit} reference transcript(s) hold letters or digits outside the recogniser's "
                      f"vocabulary ({shown!r}), dropped before scoring; spell numbers as words for a fair WER",
                      stacklevel=3)  # fmt: skip


def references_for(mixture_id: str, num_sources: int, transcripts: Mapping[str, str],
                   normalize: Callable[[str], str] | None = None) -> list[str]:  # fmt: skip
    """The reference transcript of each source of a mixture, in source order.

    ``normalize`` is the recogniser's own text normalisation (its tokenizer's, as in training): the
    hypotheses are in its lower-case vocabulary, LibriSpeech references are upper case, and the
    error rates compare strings as they are.

    Raises:
        UserError: an utterance has no transcript, or none of its words survives ``normalize``.
    """
    ids = source_ids(mixture_id, num_sources)
    missing = [i for i in ids if i not in transcripts]
    if missing:
        raise UserError(f"mixture {mixture_id}: no transcript for utterance(s) {', '.join(missing)}")
    if normalize is None:
        return [transcripts[i] for i in ids]
    texts = [normalize(transcripts[i]) for i in ids]
    empty = [i for i, text in zip(ids, texts, strict=True) if not text]
    if empty:
        raise UserError(f"mixture {mixture_id}: the transcript of {', '.join(empty)} has no word in the recogniser's "
                        "vocabulary")  # fmt: skip
    return texts


# ---------------------------------------------------------------- reference descriptors


def input_snr_db(sources: Tensor) -> float:
    """SNR of the weakest source against the sum of the others in the mixture, in dB (``sources[S, T]``)."""
    sources = sources.double()
    total = sources.sum(0)
    snrs = [10 * torch.log10(s.pow(2).sum() / (total - s).pow(2).sum().clamp_min(1e-20)) for s in sources]
    return float(min(snrs))


def overlap_ratio(sources: Tensor, sample_rate: int, frame_s: float = 0.02, floor_db: float = -40.0) -> float:
    """Fraction of the speech-active frames in which at least two sources are active.

    A source is active in a frame whose energy is within ``floor_db`` of its loudest frame.
    """
    frame = max(1, int(frame_s * sample_rate))
    usable = sources.shape[-1] // frame * frame
    if usable == 0:
        return 0.0
    energy = sources[:, :usable].double().reshape(sources.shape[0], -1, frame).pow(2).sum(-1)
    peak = energy.amax(-1, keepdim=True).clamp_min(1e-20)
    active = energy > peak * 10 ** (floor_db / 10)
    speech = active.any(0).sum()
    return float((active.sum(0) >= 2).sum() / speech) if speech else 0.0


# ---------------------------------------------------------------- perceptual scores


def perceptual_available() -> dict[str, bool]:
    """Which optional perceptual metrics can run (``pip install "audiosep[eval]"``)."""
    return {"pesq": importlib.util.find_spec("pesq") is not None, "stoi": importlib.util.find_spec("pystoi") is not None}


def _pesq_or_none(estimate: Tensor, reference: Tensor, sample_rate: int, mode: str) -> float | None:
    """PESQ of one pair, or ``None`` where the pesq package raises (e.g. no utterance detected)."""
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    try:
        return float(perceptual_evaluation_speech_quality(estimate, reference, sample_rate, mode))
    except Exception:  # noqa: BLE001 (pesq raises its own untyped errors; the row just lacks PESQ)
        return None


def perceptual_scores(estimate: Tensor, reference: Tensor, sample_rate: int) -> dict[str, float]:
    """Mean PESQ and STOI of ``estimate[S, T]`` against ``reference[S, T]``, for the installed packages.

    PESQ is defined at 8 kHz (narrow band) and 16 kHz (wide band) only: other rates skip it.
    """
    from torchmetrics.functional.audio import short_time_objective_intelligibility

    available = perceptual_available()
    scores: dict[str, float] = {}
    if available["pesq"] and sample_rate in (8000, 16000):
        mode = "nb" if sample_rate == 8000 else "wb"
        values = [_pesq_or_none(e, r, sample_rate, mode) for e, r in zip(estimate, reference, strict=True)]
        if all(v is not None for v in values):  # PESQ refuses signals it finds no speech in
            scores["pesq"] = sum(values) / len(values)
    if available["stoi"]:
        scores["stoi"] = float(short_time_objective_intelligibility(estimate, reference, sample_rate).mean())
    return scores


# ---------------------------------------------------------------- one utterance


def check_finite(name: str, signal: Tensor) -> None:
    """Refuses NaN/Inf audio with a message naming the file."""
    if not torch.isfinite(signal).all():
        raise UserError(f"{name}: the audio holds NaN or Inf samples")


# A clean LibriMix mixture is its sources' sum up to each file's 16-bit rounding: 79 dB for sources at RMS 0.1,
# 49 dB at 0.003, computed; so the SNR bar holds only where the residual is also above the rounding's few LSB.
MIN_SUM_SNR_DB = 30.0
ROUNDING_RMS = 4 / 32768


def _mixture_file(dataset: Any, mixture_id: str) -> str:
    """The mixture's file in a LibriMix-layout split (its sources sit beside it in ``s1``, ``s2``...), else its id."""
    split_dir, folder = getattr(dataset, "split_dir", None), getattr(dataset, "mixture_folder", None)
    return str(Path(split_dir) / folder / f"{mixture_id}.wav") if split_dir and folder else f"mixture {mixture_id}"


def check_references(mixture_id: str, mixture: Tensor, sources: Tensor, clean: bool = False) -> None:
    """Refuses what makes the scores undefined: NaN/Inf, a silent source, sources not as long as the mixture;
    with ``clean`` (``sep_clean``), a mixture that is not the sum of its sources (a wrong, shifted or swapped
    file gave a plausible SI-SNRi: SI-SNRi subtracts the mixture's own score)."""
    check_finite(f"mixture {mixture_id}", mixture)
    check_finite(f"sources of {mixture_id}", sources)
    if sources.shape[-1] != mixture.shape[-1]:
        raise UserError(f"mixture {mixture_id}: sources have {sources.shape[-1]} samples, the mixture {mixture.shape[-1]}")
    silent = [k + 1 for k, source in enumerate(sources) if not source.abs().amax() > 0]
    if silent:
        raise UserError(f"mixture {mixture_id}: source s{silent[0]} is silent, so SI-SNR and SDR are undefined")
    constant = [k + 1 for k, source in enumerate(sources) if not source.amax() > source.amin()]
    if constant:
        raise UserError(f"mixture {mixture_id}: source s{constant[0]} is constant (a DC offset), so SI-SNR is undefined")
    if not mixture.amax() > mixture.amin():  # its own score, which the improvements subtract, is undefined
        raise UserError(f"mixture {mixture_id}: the mixture is silent or constant, so SI-SNRi and SDRi are undefined")
    problem = sources_problem(sources)
    if problem:
        raise UserError(f"mixture {mixture_id}: {problem}")
    if clean:
        residual = float((mixture.double() - sources.double().sum(0)).square().sum())
        snr = 10 * math.log10(float(mixture.double().square().sum()) / residual) if residual > 0 else math.inf
        if snr < MIN_SUM_SNR_DB and math.sqrt(residual / mixture.shape[-1]) > ROUNDING_RMS:
            raise UserError(f"mixture {mixture_id}: is not the sum of its sources (they explain it to {snr:.1f} dB, "
                            f"under {MIN_SUM_SNR_DB:g}): a wrong, shifted or swapped file in mix_clean, s1 or s2")  # fmt: skip


MAX_SOURCE_CORRELATION = 0.95  # two speakers' zero-mean signals correlate near 0
MAX_SOURCE_GAP_DB = 80.0  # beyond, the quieter source is near the louder one's 16-bit rounding


def sources_problem(sources: Tensor) -> str | None:
    """Why a mixture's sources make its improvements meaningless; None if they do not.

    Two copies of one signal (or one scaled) make the mixture itself score ~150 dB against each, so a good
    separator's SI-SNRi came out near -140 dB and pulled a set's mean down 50 dB; a source 120 dB below the
    other makes the mixture's score against it as extreme the other way.
    """
    values = sources.double()
    centred = values - values.mean(-1, keepdim=True)
    energy = centred.square().sum(-1)
    for first, second in itertools.combinations(range(len(sources)), 2):
        correlation = float((centred[first] * centred[second]).sum() / (energy[first] * energy[second]).sqrt())
        if abs(correlation) > MAX_SOURCE_CORRELATION:
            return (f"sources s{first + 1} and s{second + 1} are one signal (correlation {correlation:.3f}), so the "
                    "mixture's own score is extreme and SI-SNRi meaningless")  # fmt: skip
    gap = 10 * math.log10(float(energy.max() / energy.min()))
    if gap > MAX_SOURCE_GAP_DB:
        return f"its sources are {gap:.0f} dB apart (more than {MAX_SOURCE_GAP_DB:g}), so SI-SNRi is meaningless"
    return None


def match_level(estimates: Tensor, mixture: Tensor) -> Tensor:
    """Scale each estimate to the mixture's peak: separators give sources at an arbitrary scale."""
    peaks = estimates.abs().amax(-1, keepdim=True).clamp_min(1e-8)
    return estimates * (mixture.abs().max() / peaks)


@dataclass
class Transcripts:
    """Hypotheses of one mixture: once for the mixture, and per source for separated and clean speech."""

    mixture: str
    separated: list[str]
    clean: list[str]


def transcribe_conditions(transcriber: Any, mixture: Tensor, aligned: Tensor, sources: Tensor, sample_rate: int) -> Transcripts:
    """Recognise the mixture, each aligned estimate and each clean source in one batched call."""
    signals = [mixture, *match_level(aligned, mixture), *sources]
    prepared = [transcriber.prepare(signal[None], sample_rate) for signal in signals]
    texts = transcriber.transcribe(prepared)
    count = sources.shape[0]
    return Transcripts(texts[0], texts[1 : 1 + count], texts[1 + count :])


def score_utterance(
    separator: Any,
    mixture: Tensor,
    sources: Tensor,
    mixture_id: str,
    transcriber: Any | None = None,
    references: Sequence[str] | None = None,
    clean: bool = False,
) -> dict[str, Any]:
    """One row of the report: scores of ``separator`` on ``mixture[T]`` against ``sources[S, T]``; ``clean``:
    the mixture must be the sources' sum (``sep_clean``)."""
    sample_rate = separator.sample_rate
    check_references(mixture_id, mixture, sources, clean)
    try:
        separator.check_length(mixture.shape[-1], sample_rate)
        estimate = separator.separate_at_model_rate(mixture)
    except SeparationError as err:
        raise UserError(f"mixture {mixture_id}: {err.reason}") from err
    scores = separation_scores(estimate[None], sources[None], mixture[None], with_sdr=True)
    aligned = reorder_sources(estimate[None], scores.perm)[0]
    row: dict[str, Any] = {
        "id": mixture_id,
        "duration_s": round(mixture.shape[-1] / sample_rate, 4),
        "si_snr": float(scores.si_snr[0]),
        "si_snri": float(scores.si_snri[0]),
        "sdr": float(scores.sdr[0]),
        "sdri": float(scores.sdri[0]),
        "silent_sources": int(scores.silent[0]),
        "input_snr_db": input_snr_db(sources),
        "overlap_ratio": overlap_ratio(sources, sample_rate),
    }
    perceptual = perceptual_scores(aligned, sources, sample_rate)
    if perceptual:
        baseline = perceptual_scores(mixture.expand_as(sources), sources, sample_rate)
        # A score and its mixture baseline cover the same mixtures, or the two means would not compare.
        for name in perceptual.keys() & baseline.keys():
            row.update({name: perceptual[name], f"{name}_mixture": baseline[name]})
    if transcriber is not None and references is not None:
        hypotheses = transcribe_conditions(transcriber, mixture, aligned, sources, sample_rate)
        row["references"] = list(references)
        row["hyp_mixture"] = hypotheses.mixture
        row["hyp_separated"] = hypotheses.separated
        row["hyp_clean"] = hypotheses.clean
    return row


# ---------------------------------------------------------------- resumable rows


def _parse_row(line: bytes) -> dict[str, Any]:
    """A line of ``utterances.jsonl`` as a row; ``ValueError`` saying why the report cannot use it."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a row") from None
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        raise ValueError("not an object with a string id")
    present = (column for column in SCORE_COLUMNS if column in row)
    for column in dict.fromkeys(("duration_s", *ROW_SCORES, *present, "overlap_ratio")):
        if not _number(value := row.get(column)) or not math.isfinite(value):
            raise ValueError(f"{column} is {value!r:.40}, not a finite number")
    snr, silent = row.get("input_snr_db"), row.get("silent_sources")
    if not _number(snr) or math.isnan(snr):  # -inf: a silent source
        raise ValueError(f"input_snr_db is {snr!r:.40}, not a number")
    if not (_number(silent) and math.isfinite(silent) and silent == int(silent) and silent >= 0):  # Infinity: OverflowError
        raise ValueError(f"silent_sources is {silent!r:.40}, not a count")
    if "references" in row and not _transcripts(row):
        raise ValueError("its references and hypotheses are not texts, one per source")
    return row


# What every row holds (a row without them averaged the others under the count of all; reviewer).
ROW_SCORES = ("si_snr", "si_snri", "sdr", "sdri")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _transcripts(row: dict[str, Any]) -> bool:
    """Whether a row's ASR columns are texts: a reference per source, a hypothesis of the mixture, and
    one per source separated and clean."""
    references = row["references"]
    texts = (references, row.get("hyp_separated"), row.get("hyp_clean"))
    per_source = all(isinstance(t, list) and len(t) == len(references) and all(isinstance(x, str) for x in t) for t in texts)
    return per_source and isinstance(row.get("hyp_mixture"), str)


def audio_stamp(dataset: Any, index: int) -> list[list[int]] | None:
    """Size and modification time of each of item ``index``'s files (``[-1, -1]`` for one that is gone), or
    None for a dataset that does not name its files: a resumed row stands only while they are unchanged."""
    files = getattr(dataset, "files", None)
    if files is None:
        return None
    stamp = []
    for path in files(index):
        try:
            status = os.stat(path)
        except OSError:
            stamp.append([-1, -1])
        else:
            stamp.append([status.st_size, status.st_mtime_ns])
    return stamp


class RowLog:
    """The append-only ``utterances.jsonl`` of a run, and the ``run.json`` that names the run.

    Opening an existing folder resumes it: rows already there are kept (a torn last line from a
    killed run is dropped, a mixture's repeated row too) and their mixtures skipped. A folder holding
    another run is refused. The folder must exist (:func:`audiosep.io.folder_lock` makes it).
    """

    def __init__(self, out_dir: Path, identity: RunIdentity, restart: bool = False) -> None:
        self.out_dir = out_dir
        self.rows_path = out_dir / ROWS_FILE
        run_path = out_dir / RUN_FILE
        for path in (run_path, self.rows_path):
            if path.exists() and not path.is_file():
                raise UserError(f"{path}: exists and is not a file; use another --out-dir")
        if restart:
            self.rows_path.unlink(missing_ok=True)
        elif self.rows_path.is_file() and read_json(run_path) != asdict(identity):
            # Rows without the run.json that names them are refused too: they may be another run's.
            raise UserError(
                f"{out_dir}: holds the results of a different evaluation (checkpoint, data, its metadata, split, task, "
                f"dtype or audiosep's code differ, or {RUN_FILE} is missing); use another --out-dir or --restart"
            )
        atomic_write_text(run_path, json.dumps(asdict(identity), indent=2))
        self.rows = self._read_rows()

    def _read_rows(self) -> list[dict[str, Any]]:
        """The rows written so far; a torn last line (a killed run) is cut off, damage elsewhere refused."""
        if not self.rows_path.is_file():
            return []
        data = self.rows_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        rows, seen = [], set()
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                row = _parse_row(line)
            except ValueError as err:
                raise UserError(f"{self.rows_path}: line {number}: {err}; use another --out-dir or --restart") from None
            if row["id"] not in seen:  # a mixture counts once, whatever wrote it twice
                seen.add(row["id"])
                rows.append(row)
        if len(complete) != len(data):
            with self.rows_path.open("r+b") as handle:
                handle.truncate(len(complete))
        return rows

    @property
    def done(self) -> set[str]:
        return {row["id"] for row in self.rows}

    def forget(self, ids: set[str]) -> None:
        """Drop the rows of ``ids`` (their audio changed since they were scored): the file is rewritten."""
        self.rows = [row for row in self.rows if row["id"] not in ids]
        atomic_write_text(self.rows_path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably (a kill after this returns cannot lose it)."""
        with self.rows_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(row)


def pending(ids: Sequence[str], done: set[str], limit: int | None) -> Iterator[int]:
    """Indices of the first ``limit`` ids (all when ``None``) whose rows are not written yet."""
    selected = range(len(ids)) if limit is None else range(min(limit, len(ids)))
    return (index for index in selected if ids[index] not in done)


def _forget_changed_audio(log: RowLog, dataset: Any, index_of: Mapping[str, int]) -> None:
    """Drop resumed rows whose mixture or source files changed (or went) since they were scored, or that hold
    no file stamps (written by an older audiosep), and say which: a fixed or replaced file kept its old
    scores in the report (reviewer). ``index_of``: each mixture id's index in ``dataset``."""
    changed, unstamped = [], []
    for row in log.rows:
        if row["id"] in index_of and row.get("audio_stamp") != audio_stamp(dataset, index_of[row["id"]]):
            (changed if "audio_stamp" in row else unstamped).append(row["id"])
    for ids, reason in ((changed, "have changed files since"), (unstamped, "hold no file stamps (an older audiosep wrote them)")):
        if ids:
            warnings.warn(f"{len(ids)} mixture(s) scored before {reason} (e.g. {min(ids)}): scoring them again",
                          stacklevel=2)  # fmt: skip
    if changed or unstamped:
        log.forget({*changed, *unstamped})


# ---------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class EvalResult:
    """What a run produced: the summary, every row (resumed ones included), the files written."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    files: list[Path]


def evaluate(
    separator: Any,
    dataset: Any,
    out_dir: str | os.PathLike,
    identity: RunIdentity,
    transcriber: Any | None = None,
    transcripts: Mapping[str, str] | None = None,
    limit: int | None = None,
    restart: bool = False,
    progress: bool = True,
    plots: bool = True,
) -> EvalResult:
    """Score every mixture of ``dataset`` (items ``(mixture, sources, id)``) and write the reports.

    Rows already in ``out_dir`` from an interrupted run of the same ``identity`` are kept; the
    folder is locked while the run writes into it.

    Raises:
        UserError: ``limit`` below 1 (``ids[:-1]`` would quietly drop the last mixture), or another
            run holds ``out_dir``.
    """
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    with folder_lock(Path(out_dir), "--out-dir"):
        return _evaluate_locked(separator, dataset, Path(out_dir), identity, transcriber, transcripts, limit,
                                restart, progress, plots)  # fmt: skip


def _evaluate_locked(separator: Any, dataset: Any, out_dir: Path, identity: RunIdentity, transcriber: Any | None,
                     transcripts: Mapping[str, str] | None, limit: int | None, restart: bool, progress: bool,
                     plots: bool) -> EvalResult:  # fmt: skip
    """:func:`evaluate` in its locked ``out_dir``."""
    from tqdm import tqdm

    ids = list(dataset.ids)
    selected = ids if limit is None else ids[:limit]
    wanted = set(selected)
    references: dict[str, list[str]] | None = None
    if transcriber is not None and transcripts is not None:  # all of them first: fail before hours of work,
        normalize = transcriber.tokenizer.normalize  # and before a --restart clears the folder's rows
        references = {i: references_for(i, separator.num_sources, transcripts, normalize) for i in selected}
        warn_dropped_characters(selected, separator.num_sources, transcripts, transcriber.tokenizer.vocabulary)
    index_of = {mixture_id: index for index, mixture_id in enumerate(ids)}
    log = RowLog(out_dir, identity, restart=restart)
    _forget_changed_audio(log, dataset, index_of)
    todo = list(pending(ids, log.done, limit))
    if todo or restart:  # the reports of the rows so far (or of a run restarted) no longer hold
        remove_reports(out_dir)
    started = time.perf_counter()
    with torch.inference_mode():
        for index in tqdm(todo, desc="evaluating", unit="mix", disable=None if progress else True):  # None: a terminal only
            stamp = audio_stamp(dataset, index)  # before reading: a file changed while it is scored is rescored later
            mixture, sources, mixture_id = dataset[index]
            texts = None if references is None else references[mixture_id]
            try:
                row = score_utterance(separator, mixture, sources, mixture_id, transcriber, texts,
                                      clean=identity.task == "sep_clean")  # fmt: skip
            except UserError as err:  # named only the mixture id, and the scores so far seemed lost (reviewer)
                raise UserError(f"{_mixture_file(dataset, mixture_id)}: {err}; the {len(log.rows)} mixture(s) scored "
                                "so far are kept in the output folder: a rerun resumes after it is fixed") from None  # fmt: skip
            log.append(row if stamp is None else row | {"audio_stamp": stamp})
    rows = sorted((row for row in log.rows if row["id"] in wanted), key=lambda row: index_of[row["id"]])  # split's order
    if not rows:
        raise UserError(f"{identity.data_dir}: no mixture to evaluate in split {identity.split}")
    if references is not None:  # rows resumed from an older run hold the texts it compared with
        for row in rows:
            if "references" in row:
                row["references"] = references[row["id"]]
    summary = summarise(rows, asdict(identity), time.perf_counter() - started)
    summary["scored_this_run"] = len(todo)
    files = write_reports(rows, summary, out_dir, plots=plots)
    return EvalResult(summary, rows, files)
