"""Cost of our separators next to their peers' implementations, measured in the same run.

Ours run through :func:`audiosep.optimize.prepare_for_inference` (as ``audiosep infer`` does);
``ours-*-plain`` is the plain model, to measure what the transform buys. Peers: torchaudio's
Conv-TasNet (``ta-*``) and SpeechBrain's SepFormer / RE-SepFormer (``sb-*``).

For every model and mixture length (8 kHz, batch 1, fp32, CPU): parameters, multiply-accumulates
(``FlopCounterMode`` flops / 2, counted on the plain model: the fused op is not counted), peak extra RAM of one forward pass (in a fresh process per model:
Linux ``VmHWM`` reset just before the pass, after a warm-up, minus the RSS then), and inference
time (min over repeats, 2 threads by default; all models of one length in one process, their
passes alternating, so that a shared machine's load hits them alike). Prints a markdown table and
writes the records as JSON.

    python benchmarks/separator_cost.py --models ours-conv-tasnet ours-conv-tasnet-plain ta-conv-tasnet \
        --lengths 1 4 16 --repeats 9 --out conv_tasnet_cost.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 8000
OURS = {  # name -> (registry preset, overrides): the peer's configuration
    "conv-tasnet": ("conv_tasnet_base", {"encoder_activation": "linear"}),  # torchaudio's has no encoder ReLU
    "sepformer": ("sepformer_base", {}),
    "resepformer": ("resepformer_base", {}),
    "tiny-sepformer": ("tiny_sepformer_base", {}),
}
MODELS = (
    "ours-conv-tasnet",
    "ours-conv-tasnet-plain",
    "ta-conv-tasnet",
    "ours-sepformer",
    "ours-sepformer-plain",
    "sb-sepformer",
    "ours-resepformer",
    "ours-resepformer-plain",
    "sb-resepformer",
    "ours-tiny-sepformer",
)
PEERS = {
    "ours-conv-tasnet": "ta-conv-tasnet",
    "ours-conv-tasnet-plain": "ta-conv-tasnet",
    "ours-sepformer": "sb-sepformer",
    "ours-sepformer-plain": "sb-sepformer",
    "ours-resepformer": "sb-resepformer",
    "ours-resepformer-plain": "sb-resepformer",
}


def build(name: str):
    """``(module, separate(mixture) -> estimates, counted)`` for a name of :data:`MODELS`.

    ``counted`` is what FlopCounterMode runs: the plain model for ours (same maths as the
    prepared one, whose fused oneDNN op it cannot count).
    """
    sys.path.insert(0, str(REPO))
    if name.startswith("ours-"):
        from audiosep.models import build as build_preset
        from audiosep.optimize import prepare_for_inference

        preset, overrides = OURS[name.removeprefix("ours-").removesuffix("-plain")]
        model = build_preset(preset, **overrides).eval()
        return model, model if name.endswith("-plain") else prepare_for_inference(model), model
    if name == "ta-conv-tasnet":
        import torchaudio

        model = torchaudio.models.conv_tasnet_base(num_sources=2).eval()

        def separate_torchaudio(mixture):
            return model(mixture.unsqueeze(1))  # torchaudio wants [B, 1, T]

        return model, separate_torchaudio, separate_torchaudio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, separate = build_speechbrain(name)
        return module, separate, separate


def build_speechbrain(name: str):
    """SpeechBrain's SepFormer (LibriMix recipe) or RE-SepFormer (WSJ0-Mix recipe), recipe-style forward."""
    import torch
    from speechbrain.lobes.models.dual_path import Decoder, Encoder, SepformerWrapper
    from speechbrain.lobes.models.resepformer import (
        ResourceEfficientSeparator,
        SBTransformerBlock_wnormandskip,
    )

    if name == "sb-sepformer":
        model = SepformerWrapper().eval()
        return model, model
    blocks = [
        SBTransformerBlock_wnormandskip(
            8,
            128,
            8,
            d_ffn=1024,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )
        for _ in range(2)
    ]
    encoder = Encoder(kernel_size=16, out_channels=128)
    masknet = ResourceEfficientSeparator(
        128, causal=False, num_spk=2, layer=2, unit=128, segment_size=150, mem_type="av",
        seg_model=blocks[0], mem_model=blocks[1],
    )  # fmt: skip
    decoder = Decoder(in_channels=128, out_channels=1, kernel_size=16, stride=8, bias=False)
    model = torch.nn.ModuleList([encoder, masknet, decoder]).eval()

    def separate(mixture):
        features = encoder(mixture)
        return torch.stack([decoder(features * mask) for mask in masknet(features)], dim=1)

    return model, separate


def _status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident high-water mark) of this process, MiB."""
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) / 1024


def start_peak_window() -> float:
    """Return freed heap to the OS, reset the RSS high-water mark, and return the RSS now (MiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline may include freed heap
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM
    return _status_mib("VmRSS")


def measure_memory(name: str, seconds: float, threads: int) -> dict[str, Any]:
    """Parameters, MACs and peak extra RAM of one pass (run in a fresh worker process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, separate, counted = build(name)
    mixture = torch.randn(1, int(seconds * SAMPLE_RATE))
    with torch.inference_mode():
        separate(mixture[:, : SAMPLE_RATE // 4])  # warm-up: library buffers are not the model's memory
        before = start_peak_window()
        separate(mixture)
        peak = _status_mib("VmHWM") - before
        with FlopCounterMode(display=False) as counter:
            counted(mixture)
    macs = counter.get_total_flops() / 2
    return {
        "model": name,
        "seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "gmac_per_audio_second": macs / seconds / 1e9,
        "peak_extra_mib": peak,
        "threads": threads,
    }


def measure_times(names: list[str], seconds: float, repeats: int, threads: int) -> dict[str, list[float]]:
    """Min wall and min process-CPU time of each model; passes alternate between models.

    On a shared machine, load comes and goes: alternating the models (in one worker process)
    exposes them to the same load, so that their ratio stays meaningful even when absolute times
    are not; CPU time is the less load-sensitive of the two.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    separators = {name: build(name)[1] for name in names}
    mixture = torch.randn(1, int(seconds * SAMPLE_RATE))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with torch.inference_mode():
        for separate in separators.values():
            separate(mixture[:, : SAMPLE_RATE // 4])  # warm-up
        for _ in range(repeats):
            for name, separate in separators.items():
                wall, cpu = time.perf_counter(), time.process_time()
                separate(mixture)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: [min(w for w, _ in values), min(c for _, c in values)] for name, values in times.items()}


def run_worker(*worker_args: str, threads: int) -> Any:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", *worker_args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker {worker_args} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_length(names: list[str], seconds: float, repeats: int, threads: int) -> list[dict[str, Any]]:
    """Records of every model at one length: memory one process each, times in one shared process."""
    records = [run_worker("memory", name, str(seconds), str(threads), threads=threads) for name in names]
    times = run_worker("time", str(seconds), str(repeats), str(threads), *names, threads=threads)
    for record in records:
        time_s, cpu_s = times[record["model"]]
        record.update(time_s=time_s, rtf=time_s / seconds, cpu_s=cpu_s, repeats=repeats)
    return records


def markdown(records: list[dict[str, Any]], lengths: list[float]) -> str:
    """One row per model: params, GMAC per audio second, RTF and peak extra RAM per length, speed-up."""
    by_key = {(r["model"], r["seconds"]): r for r in records}
    names = [m for m in MODELS if any(r["model"] == m for r in records)]
    cols = (
        " | ".join(f"RTF {s:g} s" for s in lengths)
        + " | "
        + " | ".join(f"RAM {s:g} s (MiB)" for s in lengths)
    )
    lines = [f"| model | params (M) | GMAC / audio s | {cols} | speed-up vs peer: wall (CPU time) |",
             "|" + "---|" * (4 + 2 * len(lengths))]  # fmt: skip
    for name in names:
        rows = [by_key.get((name, s)) for s in lengths]
        first = next(r for r in rows if r)
        rtf = " | ".join(f"{r['rtf']:.3f}" if r else "-" for r in rows)
        ram = " | ".join(f"{r['peak_extra_mib']:.0f}" if r else "-" for r in rows)
        peer = PEERS.get(name)
        speedup = " / ".join(
            f"{by_key[(peer, s)]['time_s'] / r['time_s']:.2f}x ({by_key[(peer, s)]['cpu_s'] / r['cpu_s']:.2f}x)"
            for s, r in zip(lengths, rows, strict=True)
            if r and peer and (peer, s) in by_key
        )
        speedup = speedup or "-"
        lines.append(
            f"| {name} | {first['params'] / 1e6:.2f} | {first['gmac_per_audio_second']:.2f} | {rtf} | {ram} | {speedup} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[4.0, 16.0, 64.0],
        help="mixture seconds",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed passes after the first (min is kept)",
    )
    parser.add_argument(
        "--max-audio",
        type=float,
        default=64.0,
        help="fewer repeats for long mixtures: at most this many seconds",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="separator_cost.json", help="JSON file for the records")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            result = measure_memory(rest[0], float(rest[1]), int(rest[2]))
        else:
            result = measure_times(rest[3:], float(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return 0
    records = []
    for seconds in args.lengths:  # short lengths first: the long ones are slow
        repeats = max(1, min(args.repeats, int(args.max_audio // seconds)))
        for r in measure_length(args.models, seconds, repeats, args.threads):
            records.append(r)
            print(
                f"{r['model']:22s} {seconds:5g} s: RTF {r['rtf']:.3f}, peak +{r['peak_extra_mib']:.0f} MiB",
                flush=True,
            )
    Path(args.out).write_text(json.dumps(records, indent=2))
    print()
    print(markdown(records, args.lengths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
