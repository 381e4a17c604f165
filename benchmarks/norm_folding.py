"""What folding the norms buys at inference: batch-1 CPU RTF of plain vs prepared models, per norm.

    OMP_NUM_THREADS=1 python benchmarks/norm_folding.py --seconds 4 [--models conv_tasnet_demo ...]

For every model and norm: build it, give its norms non-trivial parameters and (for batch-statistics
norms) running statistics from a few training passes, check that
:func:`audiosep.optimize.prepare_for_inference` gives the same output (max abs error printed), then
time the plain and the folded model interleaved (:func:`audiosep.norm_study.real_time_factors`).
Prints a markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from audiosep.norm_study import STUDY_PRESETS, StudySettings, build_model, real_time_factors
from audiosep.optimize import prepare_for_inference

NORMS = ("gLN", "cLN", "BN", "unified_norm", "power_norm", "rms_norm", "dyt", "elementwise_ln", "none")
REFUSED = {("tiny_sepformer_demo", "cLN")}  # cumulative LN on overlapping dual-path chunks


def prepared_pair(model_name: str, norm: str, seconds: float) -> dict[str, float]:
    """The folded model's max abs error on speech-level noise and both RTFs."""
    torch.manual_seed(0)
    model = build_model(StudySettings(data="", out="", model=model_name), norm)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
        model.train()
        for _ in range(3):
            model(0.1 * torch.randn(2, 8000))
    model.eval()
    mixture = 0.1 * torch.randn(1, int(seconds * 8000))
    with torch.inference_mode():
        error = float((prepare_for_inference(model)(mixture) - model(mixture)).abs().max())
    rtf = real_time_factors(model, 8000, seconds)
    return {"max_abs_error": error, "rtf_plain": rtf["plain"], "rtf_folded": rtf["folded"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["conv_tasnet_demo", "conv_tasnet_base", *STUDY_PRESETS])
    parser.add_argument("--norms", nargs="+", default=list(NORMS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    print(f"batch 1, {args.seconds:g} s of audio, {torch.get_num_threads()} thread(s)\n")
    print("| model | norm | RTF plain | RTF folded | speed-up | max abs error |\n|---|---|---|---|---|---|")
    rows = []
    for model_name in args.models:
        for norm in args.norms:
            if (model_name, norm) in REFUSED:
                continue
            row = {"model": model_name, "norm": norm} | prepared_pair(model_name, norm, args.seconds)
            rows.append(row)
            print(f"| {model_name} | {norm} | {row['rtf_plain']:.4f} | {row['rtf_folded']:.4f} | "
                  f"{row['rtf_plain'] / row['rtf_folded']:.2f}x | {row['max_abs_error']:.1e} |", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
