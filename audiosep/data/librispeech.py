"""LibriSpeech in its official layout: utterance listing and JSON-lines manifests.

Layout: ``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` next to
``<speaker>-<chapter>.trans.txt`` (one ``<utt_id> TEXT`` line per utterance). A manifest line is
``{"audio_filepath", "duration", "text", "speaker"}`` (NeMo's keys plus the speaker), one file per
subset. Unreadable files are skipped and listed, so one corrupt flac among 100,000 costs one line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import soundfile as sf
from tqdm import tqdm

from audiosep.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Utterance:
    """One LibriSpeech utterance; ``text`` is ``None`` when its transcript line is missing."""

    path: Path
    utterance_id: str
    speaker: str
    text: str | None


@dataclass(frozen=True)
class ProbeResult:
    """What reading one file told us: its frames and rate, or why it could not be read."""

    path: Path
    num_frames: int = 0
    sample_rate: int = 0
    error: str | None = None


def imap_with_progress(
    func: Callable[[T], R], items: Iterable[T], total: int, workers: int, desc: str, unit: str = "file"
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, unordered, from ``workers`` processes, with a progress bar.

    One worker runs in this process (no pool), which keeps tracebacks and monkeypatching simple.
    The pool forks where the platform allows it, so workers start without re-importing torch.
    """
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
    try:
        if workers <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers, initializer=_default_signals)
        try:
            for result in pool.imap_unordered(func, items, chunksize=4):
                yield result
                bar.update()
        except BaseException:  # an error, Ctrl-C or an abandoned generator: stop the workers
            pool.terminate()
            raise
        else:
            pool.close()  # normal end: workers exit on their own
        finally:
            pool.join()
    finally:
        bar.close()


def _default_signals() -> None:
    """Pool workers: SIGTERM ends them even if the parent (e.g. Lightning) installed a handler
    before forking; Ctrl-C is left to the parent, which then terminates the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_transcripts(chapter_dir: Path) -> dict[str, str]:
    """``{utterance_id: text}`` from every ``*.trans.txt`` in one chapter folder."""
    texts: dict[str, str] = {}
    for transcript in sorted(chapter_dir.glob("*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            utterance_id, _, text = line.strip().partition(" ")
            if utterance_id:
                texts[utterance_id] = text.strip()
    return texts


def list_utterances(root: str | Path, subset: str) -> list[Utterance]:
    """Every ``*.flac`` of ``<root>/<subset>/<speaker>/<chapter>/``, sorted by path.

    Raises:
        UserError: the subset folder does not exist or holds no flac file.
    """
    subset_dir = Path(root).expanduser() / subset
    if not subset_dir.is_dir():
        raise UserError(f"{subset_dir}: LibriSpeech subset folder not found")
    utterances = []
    for chapter_dir in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
        texts = read_transcripts(chapter_dir)
        speaker = chapter_dir.parent.name
        for flac in sorted(chapter_dir.glob("*.flac")):
            utterances.append(Utterance(flac, flac.stem, speaker, texts.get(flac.stem)))
    if not utterances:
        raise UserError(f"{subset_dir}: no <speaker>/<chapter>/*.flac files found")
    return utterances


def probe_audio(path: Path, decode: bool = True) -> ProbeResult:
    """Frames and rate of ``path``; with ``decode`` the whole file is decoded to catch corruption."""
    try:
        info = sf.info(str(path))
        if decode:
            with sf.SoundFile(str(path)) as handle:
                decoded = sum(len(block) for block in handle.blocks(blocksize=1 << 16, dtype="int16"))
            if decoded != info.frames:
                return ProbeResult(path, error=f"decoded {decoded} frames, header says {info.frames}")
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        return ProbeResult(path, error=str(err).strip() or type(err).__name__)
    if info.frames == 0:
        return ProbeResult(path, error="no audio samples")
    return ProbeResult(path, info.frames, int(info.samplerate))


def _probe_decoded(path: Path) -> ProbeResult:
    return probe_audio(path, decode=True)


def _probe_header(path: Path) -> ProbeResult:
    return probe_audio(path, decode=False)


def probe_many(paths: list[Path], workers: int, decode: bool, desc: str) -> dict[Path, ProbeResult]:
    """:func:`probe_audio` over ``paths`` in parallel, keyed by path."""
    func = _probe_decoded if decode else _probe_header
    return {r.path: r for r in imap_with_progress(func, paths, len(paths), workers, desc)}


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class ManifestReport:
    """Outcome of one subset: where the manifest went, how many lines, which files were skipped."""

    subset: str
    manifest: Path
    num_written: int
    skipped: list[tuple[Path, str]]


def write_subset_manifest(
    root: str | Path, subset: str, out_dir: str | Path, workers: int = 1, decode: bool = True
) -> ManifestReport:
    """Write ``<out_dir>/<subset>.jsonl``; unreadable or untranscribed files go to ``<subset>.skipped.tsv``.

    Args:
        root: the LibriSpeech folder (holding ``train-clean-100/`` etc.).
        subset: a subset folder name, e.g. ``dev-clean``.
        out_dir: where the manifest (and the skip list, if any) are written.
        workers: processes used to read the audio.
        decode: decode every file (catches truncated/corrupt flacs) rather than read headers only.

    Raises:
        UserError: the subset folder is missing or empty.
    """
    out_dir = Path(out_dir)
    utterances = list_utterances(root, subset)
    probes = probe_many([u.path for u in utterances], workers, decode, f"reading {subset}")
    lines, skipped = [], []
    for utterance in utterances:
        probe = probes[utterance.path]
        if probe.error is not None:
            skipped.append((utterance.path, probe.error))
        elif utterance.text is None:
            skipped.append((utterance.path, "no line in the chapter's .trans.txt"))
        else:
            record = {
                "audio_filepath": str(utterance.path.resolve()),
                "duration": probe.num_frames / probe.sample_rate,
                "text": utterance.text,
                "speaker": utterance.speaker,
            }
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    manifest = out_dir / f"{subset}.jsonl"
    write_text_atomic(manifest, "".join(lines))
    skip_list = out_dir / f"{subset}.skipped.tsv"
    if skipped:
        write_text_atomic(skip_list, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
    elif skip_list.exists():
        skip_list.unlink()
    return ManifestReport(subset, manifest, len(lines), skipped)


def read_speaker_sexes(root: str | Path) -> dict[str, str]:
    """``{speaker_id: "F"|"M"}`` from LibriSpeech's ``SPEAKERS.TXT`` (empty when absent)."""
    path = Path(root).expanduser() / "SPEAKERS.TXT"
    if not path.is_file():
        return {}
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = [field.strip() for field in line.split("|")]
        if line.startswith(";") or len(fields) < 2:
            continue
        sexes[fields[0]] = fields[1]
    return sexes
