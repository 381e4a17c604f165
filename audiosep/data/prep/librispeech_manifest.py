"""LibriSpeech JSON-lines manifests (offline preparation for ASR training).

A manifest line is ``{"audio_filepath", "duration", "text", "speaker"}`` (NeMo's keys plus the
speaker), one file per subset, read from the official layout by
:func:`audiosep.data.librispeech.list_utterances`. Unreadable files are skipped and listed, so one
corrupt flac among 100,000 costs one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from audiosep.data.librispeech import list_utterances
from audiosep.data.parallel import imap_with_progress
from audiosep.io import atomic_write_text


@dataclass(frozen=True)
class ProbeResult:
    """What reading one file told us: its frames and rate, or why it could not be read."""

    path: Path
    num_frames: int = 0
    sample_rate: int = 0
    error: str | None = None


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
    if lines:  # none: the caller refuses the subset, and an earlier run's manifest stays as it was
        atomic_write_text(manifest, "".join(lines))
    skip_list = out_dir / f"{subset}.skipped.tsv"
    if skipped:
        atomic_write_text(skip_list, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
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
