"""``audiosep transcribe --ckpt CKPT [--beam-size N] [--out FILE] FILE...``: print or write transcripts.

One line per file, ``PATH<TAB>TRANSCRIPT``, in the order given. An unreadable file gets a one-line
error on stderr and the others are still transcribed; the exit code is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiosep.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="audio files (any sample rate; mixed to mono)"
    )
    parser.add_argument(
        "--ckpt", required=True, help="ASR checkpoint (audiosep model file or Lightning .ckpt)"
    )
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); >1 = beam search")
    parser.add_argument("--lm", default=None, help="KenLM .arpa/.bin for beam search (needs flashlight-text)")
    parser.add_argument("--lexicon", default=None, help="lexicon for a word LM: `word c h a r s |` per line")
    parser.add_argument("--lm-weight", type=float, default=0.5, help="language model weight (default 0.5)")
    parser.add_argument("--word-score", type=float, default=0.0, help="score added per word (default 0)")
    parser.add_argument("--out", default=None, help="write the transcripts here instead of stdout")
    parser.add_argument("--batch-size", type=int, default=8, help="files per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _load_transcriber(args: argparse.Namespace):  # noqa: ANN202 (lazy import keeps --help fast)
    from audiosep.checkpoint import CheckpointError
    from audiosep.transcriber import Transcriber

    try:
        return Transcriber.from_checkpoint(
            args.ckpt,
            device=args.device,
            batch_size=args.batch_size,
            beam_size=args.beam_size,
            lm_path=args.lm,
            lexicon_path=args.lexicon,
            lm_weight=args.lm_weight,
            word_score=args.word_score,
        )
    except CheckpointError as err:
        raise UserError(str(err)) from err
    except ValueError as err:
        raise UserError(f"{args.ckpt}: {err}") from err


def run(args: argparse.Namespace) -> int:
    from audiosep.data.audio import read_audio

    transcriber = _load_transcriber(args)
    waveforms, names, failed = [], [], 0
    for name in args.files:
        try:
            waveform, rate = read_audio(name)
        except UserError as err:
            print(f"audiosep: error: {err}", file=sys.stderr)
            failed += 1
            continue
        waveforms.append(transcriber.prepare(waveform, rate, name))
        names.append(name)
    texts = transcriber.transcribe(waveforms) if waveforms else []
    lines = [f"{name}\t{text}\n" for name, text in zip(names, texts, strict=True)]
    if args.out is None:
        sys.stdout.write("".join(lines))
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(lines), encoding="utf-8")
    return 1 if failed else 0
