"""Evaluation throughput: utterances per second for SI-SNR, our BSS-Eval SDR and mir_eval's, on one machine.

    python benchmarks/eval_throughput.py --seconds 4 --utterances 40 --threads 2 [--device cuda] [--json out.json]

Each utterance is a 2-speaker pair of ``--seconds`` at 8 kHz (speech-like harmonic signals, estimates
with filtering, interference and noise). SI-SNR and our SDR score the whole set in batches of
``--batch`` utterances (``metrics.bss_sdr``, float64); mir_eval's ``bss_eval_sources`` scores one
utterance at a time, as users call it, with ``compute_permutation=False``. The largest SDR
difference between the two is printed too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from signal_helpers import harmonic_tone  # noqa: E402

from audiosep.losses import si_snr  # noqa: E402
from audiosep.metrics import bss_sdr  # noqa: E402

RATE = 8000


def make_set(count: int, seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(estimates, references)``, each ``[count, 2, T]`` float64."""
    rng = np.random.default_rng(seed)
    length = int(seconds * RATE)
    refs = np.stack([[harmonic_tone(rng, length, RATE) for _ in range(2)] for _ in range(count)]).astype(np.float64)
    ests = 0.9 * refs + 0.2 * refs[:, ::-1] + 0.02 * rng.standard_normal(refs.shape)
    return ests, refs


def timed(function, repeats: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--batch", type=int, default=20, help="utterances per batched SDR call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mir_eval.separation import bss_eval_sources

    ests, refs = make_set(args.utterances, args.seconds)
    est_t = torch.from_numpy(ests).float().to(args.device)
    ref_t = torch.from_numpy(refs).float().to(args.device)
    batches = range(0, args.utterances, args.batch)

    t_si_snr, _ = timed(lambda: si_snr(est_t, ref_t))
    t_ours, ours = timed(lambda: torch.cat([bss_sdr(est_t[i : i + args.batch], ref_t[i : i + args.batch]) for i in batches]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t_mir, theirs = timed(lambda: np.stack([bss_eval_sources(r, e, compute_permutation=False)[0]
                                                for e, r in zip(ests, refs, strict=True)]), repeats=1)
    max_diff = float(np.abs(ours.cpu().numpy() - theirs).max())
    rows = {
        "si_snr": args.utterances / t_si_snr,
        "bss_sdr (ours)": args.utterances / t_ours,
        "mir_eval bss_eval_sources": args.utterances / t_mir,
    }
    print(f"{args.utterances} utterances x 2 sources x {args.seconds} s at 8 kHz, {args.threads} threads, {args.device}")
    print("| metric | utterances/s |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:.1f} |")
    print(f"ours / mir_eval: {rows['bss_sdr (ours)'] / rows['mir_eval bss_eval_sources']:.1f}x; "
          f"max |SDR difference| {max_diff:.5f} dB")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "utterances_per_s": rows,
                                         "max_abs_sdr_difference_db": max_diff}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
