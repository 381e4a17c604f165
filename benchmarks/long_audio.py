"""Peak memory and time of ``audiosep infer`` on 1-, 10- and 60-minute 8 kHz files, next to the model's own RTF.

For each separator preset (random weights: cost does not depend on them) and each length, one
``audiosep infer`` process separates a generated mixture (two tones and noise, written in blocks);
its peak resident memory is the child's ``ru_maxrss`` (``os.wait4``) and its time the wall clock,
less the start-up (import, model load) measured on a 1 s file. The model's own real-time factor is
one forward pass of the prepared model over one chunk (``--chunk-seconds``) in this process, median
of ``--repeats``; the chunking overhead is the infer RTF over that. Files up to
``--unchunked-max-minutes`` are also separated in one pass (``--chunk-seconds`` past their length),
which pays the same one-off costs (a first pass at a new shape, fresh memory): the time over that one
pass is what chunking itself costs. Writes ``long_audio.json`` and ``long_audio.md`` to ``--out``.

    python benchmarks/long_audio.py --models conv_tasnet_base resepformer_base --minutes 1 10 60 --out long_audio
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from audiosep.checkpoint import save_model  # noqa: E402
from audiosep.models.registry import build  # noqa: E402
from audiosep.optimize import prepare_for_inference  # noqa: E402

RATE = 8000
BLOCK = 1 << 18


def write_mixture(path: Path, seconds: float) -> None:
    """A mixture of two tones and noise, written in blocks (never whole in memory)."""
    rng = np.random.default_rng(0)
    frames = int(seconds * RATE)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as handle:
        for start in range(0, frames, BLOCK):
            t = np.arange(start, min(start + BLOCK, frames)) / RATE
            block = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 630 * t) + 0.05 * rng.standard_normal(t.size)
            handle.write(block.astype(np.float32))


def model_rtf(model: torch.nn.Module, chunk_seconds: float, repeats: int) -> float:
    """Seconds of compute per second of audio of one forward pass over one chunk (prepared model)."""
    runtime = prepare_for_inference(model.eval())
    chunk = 0.1 * torch.randn(1, int(chunk_seconds * RATE))
    times = []
    with torch.inference_mode():
        runtime(chunk)
        for _ in range(repeats):
            start = time.perf_counter()
            runtime(chunk)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / chunk_seconds


# The child is started by this small launcher, not by the benchmark process itself: Linux carries a
# process's peak RSS across fork and exec, so a child of the (large) benchmark process would report it.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "rc": os.waitstatus_to_exitcode(status),
                  "maxrss_kib": usage.ru_maxrss}))
"""


def run_infer(ckpt: Path, audio: Path, out: Path, extra: list[str], threads: int) -> tuple[float, float]:
    """``(wall seconds, peak RSS MiB)`` of one ``audiosep infer`` process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "audiosep", "infer", "--ckpt", str(ckpt), "--out-dir", str(out),
               "--overwrite", "--no-progress", *extra, str(audio)]  # fmt: skip
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    result = json.loads(launched.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result['rc']}")
    return result["wall"], result["maxrss_kib"] / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["conv_tasnet_base", "resepformer_base"])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--chunk-seconds", type=float, default=16.0, help="as audiosep infer's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unchunked-max-minutes", type=float, default=1.0,
                        help="files up to this long are also separated unchunked, as the reference of chunking's cost")
    parser.add_argument("--infer-args", default="", help="more audiosep infer options, e.g. '--max-memory 1000'")
    parser.add_argument("--out", default="long_audio")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--chunk-seconds", str(args.chunk_seconds), *args.infer_args.split()]
    rows = []
    with tempfile.TemporaryDirectory(dir=out) as scratch_dir:
        scratch = Path(scratch_dir)
        files = {0.0: scratch / "startup.wav"}
        write_mixture(files[0.0], 1.0)
        for minutes in args.minutes:
            files[minutes] = scratch / f"{minutes:g}min.wav"
            write_mixture(files[minutes], 60 * minutes)
        for name in args.models:
            torch.manual_seed(0)
            model = build(name)
            ckpt = scratch / f"{name}.pt"
            save_model(model, ckpt, {"sample_rate": RATE})
            rtf = model_rtf(model, args.chunk_seconds, args.repeats)
            startup, startup_rss = run_infer(ckpt, files[0.0], scratch / "sep", extra, args.threads)
            print(f"{name}: model RTF {rtf:.3f} on {args.chunk_seconds:g} s chunks; start-up {startup:.1f} s, {startup_rss:.0f} MiB", flush=True)
            for minutes in args.minutes:
                wall, rss = run_infer(ckpt, files[minutes], scratch / "sep", extra, args.threads)
                seconds = 60 * minutes
                infer_rtf = max(wall - startup, 0.0) / seconds
                row = {
                    "model": name, "minutes": minutes, "wall_s": round(wall, 1), "peak_rss_mib": round(rss),
                    "startup_s": round(startup, 1), "infer_rtf": round(infer_rtf, 4), "model_rtf": round(rtf, 4),
                    "overhead": round(infer_rtf / rtf - 1, 3),
                }  # fmt: skip
                if minutes <= args.unchunked_max_minutes:
                    whole = [*extra, "--chunk-seconds", str(seconds + 1)]
                    wall_whole, rss_whole = run_infer(ckpt, files[minutes], scratch / "sep", whole, args.threads)
                    row |= {"unchunked_wall_s": round(wall_whole, 1), "unchunked_peak_rss_mib": round(rss_whole),
                            "overhead_vs_unchunked": round((wall - startup) / (wall_whole - startup) - 1, 3)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"threads": args.threads, "chunk_seconds": args.chunk_seconds, "infer_args": args.infer_args,
            "cpu": _cpu_name(), "torch": torch.__version__}  # fmt: skip
    (out / "long_audio.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"CPU: {meta['cpu']}, {args.threads} threads, chunks of {args.chunk_seconds:g} s, torch {torch.__version__}",
        "",
        "| model | audio | wall time | peak RSS | infer RTF | model RTF | chunking overhead | unchunked: wall, peak RSS | over unchunked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['minutes']:g} min | {row['wall_s']:.0f} s | {row['peak_rss_mib']} MiB | "
            f"{row['infer_rtf']:.3f} | {row['model_rtf']:.3f} | {100 * row['overhead']:+.0f} % | {_unchunked(row)}"
        )
    (out / "long_audio.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _unchunked(row: dict) -> str:
    """The one-pass reference cells of a row (``-`` for files too long to separate whole)."""
    if "unchunked_wall_s" not in row:
        return "- | - |"
    return (f"{row['unchunked_wall_s']:.0f} s, {row['unchunked_peak_rss_mib']} MiB | "
            f"{100 * row['overhead_vs_unchunked']:+.0f} % |")  # fmt: skip


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
