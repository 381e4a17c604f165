"""LibriSpeech in its official layout, as training reads it: the utterances of a subset.

Layout: ``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` next to
``<speaker>-<chapter>.trans.txt`` (one ``<utt_id> TEXT`` line per utterance). Writing JSON-lines
manifests from it is offline preparation: :mod:`audiosep.data.prep.librispeech_manifest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audiosep.errors import UserError


@dataclass(frozen=True)
class Utterance:
    """One LibriSpeech utterance; ``text`` is ``None`` when its transcript line is missing."""

    path: Path
    utterance_id: str
    speaker: str
    text: str | None


def read_transcripts(chapter_dir: Path) -> dict[str, str]:
    """``{utterance_id: text}`` from every ``*.trans.txt`` in one chapter folder."""
    texts: dict[str, str] = {}
    for transcript in sorted(chapter_dir.glob("*.trans.txt")):
        try:
            content = transcript.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first id
        except UnicodeDecodeError as err:
            raise UserError(f"{transcript}: not UTF-8 text (byte {err.start})") from None
        for number, line in enumerate(content.split("\n"), 1):  # not splitlines(): U+2028, U+0085, form feeds
            utterance_id, _, text = line.strip().replace("\t", " ").partition(" ")  # a tab-separated line too
            if not utterance_id:
                continue
            if not text.strip():
                raise UserError(f"{transcript}:{number}: {utterance_id} has no transcript")
            if utterance_id in texts:
                raise UserError(f"{transcript}:{number}: a second line for {utterance_id}")
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
