"""LibriMix generation that reproduces the official generator from its metadata CSVs.

Same numbers as JorisCos/LibriMix ``create_librimix_from_metadata.py``: sources read as float32
16 kHz, multiplied by the CSV gains, resampled with ``scipy.signal.resample_poly``, truncated to the
shortest (``min``) or zero-padded to the longest (``max``), summed in the same order and written as
16-bit wav; noise takes WHAM!'s first channel, cut to the longest source or extended with the
official Hann cross-fade. Same tree (``Libri{n}Mix/wav{8k,16k}/{min,max}/{split}/{s1,..,noise,mix_*}``)
and the same ``metadata/{mixture,metrics}_<split>_<type>.csv``. Unlike the official script, a run is
parallel, resumable (a journal of finished rows; files are written atomically and verified, never
redone) and checks every input before starting. :mod:`audiosep.data.prep.librimix_recipe` draws
fresh metadata for any LibriSpeech-shaped corpus with the LibriMix recipe (``--new-metadata``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from audiosep.data.audio import read_audio, write_audio_atomic
from audiosep.data.mixing import MIX_TYPES, RATE
from audiosep.data.parallel import imap_with_progress
from audiosep.data.prep.librispeech_manifest import probe_many
from audiosep.data.safe_paths import check_mixture_ids, path_inside
from audiosep.errors import UserError, csv_row_error
from audiosep.io import atomic_write_text, remove_temp_files

EPS = 1e-10  # the official SNR's guard
JOURNAL_NAME = ".generation_journal.jsonl"


@dataclass(frozen=True)
class MixtureRow:
    """One row of an official ``libri{n}mix_<subset>.csv``; paths relative to the corpus roots."""

    mixture_id: str
    source_paths: tuple[str, ...]
    source_gains: tuple[float, ...]
    noise_path: str
    noise_gain: float
    line: int  # in the CSV, for messages

    def inputs_key(self, config: GenerationConfig) -> str:
        """The row's inputs (each file's resolved path, size and mtime) and gains as text: a journaled result
        counts only for the same ones (another corpus at the same relative paths reused its mixtures)."""
        files = [config.librispeech_dir / p for p in self.source_paths]
        files += [config.wham_dir / self.noise_path] if config.needs_noise and config.wham_dir else []
        identities = [_file_identity(path) for path in files]
        return json.dumps([self.source_paths, self.source_gains, self.noise_path, self.noise_gain, identities])


def _file_identity(path: Path) -> list[object]:
    """``[resolved path, size, mtime_ns]`` of an input file (``[path]`` when it cannot be read)."""
    try:
        info = path.stat()
    except OSError:
        return [str(path)]
    return [str(path.resolve()), info.st_size, info.st_mtime_ns]


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate and where: ``out_dir`` is the ``Libri{n}Mix`` folder."""

    librispeech_dir: Path
    wham_dir: Path | None
    out_dir: Path
    n_src: int
    sample_rate: int
    mode: str
    types: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in MIX_TYPES]
        if unknown or not self.types:
            raise UserError(f"unknown mixture types {unknown or self.types}; valid: {', '.join(MIX_TYPES)}")
        if self.mode not in ("min", "max"):
            raise UserError(f"mode must be min or max, got {self.mode!r}")
        if self.sample_rate <= 0 or self.sample_rate > RATE or self.sample_rate % 1000:
            raise UserError(f"sample rate must be a multiple of 1000 up to {RATE}, got {self.sample_rate}")
        if self.needs_noise and self.wham_dir is None:
            raise UserError(f"types {', '.join(self.types)} need WHAM! noise: pass --wham")

    @property
    def needs_noise(self) -> bool:
        return any(t != "mix_clean" for t in self.types)

    @property
    def mode_dir(self) -> Path:
        return self.out_dir / f"wav{self.sample_rate // 1000}k" / self.mode

    def folders(self) -> list[str]:
        """Output folders of a split: sources, noise (when a noisy type is asked for), mixtures."""
        sources = [f"s{i + 1}" for i in range(self.n_src)]
        return sources + (["noise"] if self.needs_noise else []) + list(self.types)


@dataclass
class RowResult:
    """What one generated row adds to the output metadata."""

    mixture_id: str
    length: int
    types: list[str]
    snrs: dict[str, list[float]] = field(default_factory=dict)
    clipped: bool = False
    inputs: str = ""  # MixtureRow.inputs_key of the row it was made from (empty: a journal before it)


MAX_GAIN = 1e3  # LibriMix gains are around 0.1-10; far beyond, a CSV is broken, not loud


def _gain(text: str) -> float:
    """A CSV gain: a finite number in [0, MAX_GAIN] (``ValueError`` otherwise; NaN made a flat -1.0 source)."""
    value = float(text)
    if not 0.0 <= value <= MAX_GAIN:  # NaN fails both comparisons
        raise ValueError(f"gain {text!r} is not a number in [0, {MAX_GAIN:g}]")
    return value


def read_metadata_csv(path: Path, n_src: int) -> list[MixtureRow]:
    """Rows of an official mixture CSV (``mixture_ID,source_1_path,source_1_gain,...,noise_gain``).

    Raises:
        UserError: a column is missing, a row has more fields than the header, a gain is not a number,
            or a ``mixture_ID`` is not a plain file name or repeats (it names the files written in
            every output folder).
    """
    needed = ["mixture_ID", "noise_path", "noise_gain"]
    needed += [f"source_{i + 1}_{k}" for i in range(n_src) for k in ("path", "gain")]
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of a column name
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle, restval="")
        try:
            missing = [name for name in needed if name not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: not a Libri{n_src}Mix metadata file (missing columns {missing})")
            for row in reader:
                if None in row:  # csv puts the fields beyond the header under None: a shifted or broken row
                    raise UserError(f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(row[None])} "
                                    f"fields, but the header has {len(reader.fieldnames)} columns")
                if bool(row["noise_path"]) != bool(row["noise_gain"]):  # one without the other: NaN noise
                    raise ValueError("noise_path and noise_gain must be both set or both empty")
                rows.append(
                    MixtureRow(
                        row["mixture_ID"],
                        tuple(row[f"source_{i + 1}_path"] for i in range(n_src)),
                        tuple(_gain(row[f"source_{i + 1}_gain"]) for i in range(n_src)),
                        row["noise_path"],
                        _gain(row["noise_gain"]) if row["noise_gain"] else math.nan,  # no noise: clean sets
                        reader.line_num,
                    )
                )
        except ValueError as err:
            raise UserError(f"{path}:{reader.line_num}: bad gain value ({err})") from err
        except csv.Error as err:  # a cell over csv's field limit (128 KiB): not a metadata file
            raise csv_row_error(path, reader, err) from None
    check_mixture_ids(((row.line, row.mixture_id) for row in rows), path)
    return rows


SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as `data librispeech --subsets`: no separator, . or ..


def split_name(csv_path: Path, n_src: int) -> str:
    """Output folder of a metadata CSV, as the official script names it (``dev-clean`` -> ``dev``).

    Raises:
        UserError: the name is not a plain folder name (``libri2mix_...csv`` wrote outside the mode folder).
    """
    name = csv_path.stem.replace(f"libri{n_src}mix_", "").replace("-clean", "")
    if not SPLIT_NAME.fullmatch(name):
        raise UserError(f"{csv_path}: gives the split name {name!r}, not a plain folder name (such as dev)")
    return name


def find_metadata_csvs(metadata_dir: str | Path, n_src: int, splits: list[str] | None = None) -> list[Path]:
    """The ``libri{n}mix_*.csv`` files in ``metadata_dir`` (or its ``Libri{n}Mix``/``metadata/Libri{n}Mix``).

    ``splits`` selects by subset (``dev-clean``) or output name (``dev``).

    Raises:
        UserError: none found, a CSV's split name is not a plain folder name, two CSVs give the same
            split name, or a requested split is not there.
    """
    root = Path(metadata_dir).expanduser()
    for folder in (root, root / f"Libri{n_src}Mix", root / "metadata" / f"Libri{n_src}Mix"):
        found = sorted(p for p in folder.glob(f"libri{n_src}mix_*.csv") if not p.stem.endswith("_info"))
        if found:
            break
    else:
        raise UserError(f"{root}: no libri{n_src}mix_*.csv metadata found (nor in Libri{n_src}Mix/)")
    first_of: dict[str, Path] = {}
    for path in found:  # one output folder each: two CSVs of one split overwrote each other's metadata
        other = first_of.setdefault(split_name(path, n_src), path)
        if other != path:
            raise UserError(f"{other} and {path}: both give split {split_name(path, n_src)!r}; keep one")
    if splits is None:
        return found
    by_name = {split_name(p, n_src): p for p in found} | {p.stem.split("_", 1)[1]: p for p in found}
    unknown = [s for s in splits if s not in by_name]
    if unknown:
        raise UserError(f"splits {unknown} not in {found[0].parent}; available: {', '.join(sorted(by_name))}")
    return list(dict.fromkeys(by_name[s] for s in splits))


def extend_noise(noise: np.ndarray, length: int) -> np.ndarray:
    """Loop ``noise`` up to ``length`` samples with the official 0.5 s Hann cross-fades (float64 out)."""
    window = np.hanning(RATE + 1)
    rise, fall = window[: RATE // 2 + 1], window[RATE // 2 :: -1]
    overlap = len(fall)
    if len(noise) <= overlap:
        raise UserError(f"noise of {len(noise)} samples is too short to extend (need > {overlap})")
    extended = noise
    while len(extended) < length:
        crossfade = extended[-overlap:] * fall + noise[:overlap] * rise
        extended = np.concatenate((extended[:-overlap], crossfade, noise[overlap:]))
    return extended[:length]


def read_first_channel(path: Path) -> np.ndarray:
    """First channel of a 16 kHz input as float32 (what the official script reads); raises otherwise."""
    audio, sample_rate = read_audio(path)
    if sample_rate != RATE:
        raise UserError(f"{path}: {sample_rate} Hz, but the LibriMix metadata assumes {RATE} Hz inputs")
    return audio[0].numpy()


def load_inputs(row: MixtureRow, config: GenerationConfig) -> list[np.ndarray]:
    """The row's float32 sources, plus its noise cut/extended to the longest source when needed."""
    signals = [read_first_channel(config.librispeech_dir / p) for p in row.source_paths]
    if config.needs_noise:
        max_length = max(len(s) for s in signals)
        noise = read_first_channel(config.wham_dir / row.noise_path)[:max_length]
        signals.append(noise if len(noise) == max_length else extend_noise(noise, max_length))
    return signals


def transform_signals(
    signals: list[np.ndarray], gains: list[float], sample_rate: int, mode: str
) -> list[np.ndarray]:
    """Gain, resample (16 kHz -> ``sample_rate``), then truncate (min) or zero-pad (max), in that order."""
    resampled = [resample_poly(s * g, sample_rate, RATE) for s, g in zip(signals, gains, strict=True)]
    if mode == "min":
        length = min(len(s) for s in resampled)
        return [s[:length] for s in resampled]
    length = max(len(s) for s in resampled)
    return [np.pad(s, (0, length - len(s))) for s in resampled]


def mix(parts: list[np.ndarray]) -> np.ndarray:
    """Sum in order into an array of the first part's dtype (as the official script does)."""
    mixture = np.zeros_like(parts[0])
    for part in parts:
        mixture += part
    return mixture


def snr_list(mixture: np.ndarray, parts: list[np.ndarray]) -> list[float]:
    """The official per-part SNR in dB: each part against the rest of the mixture."""
    out = []
    for part in parts:
        rest = mixture - part
        out.append(float(10 * np.log10(np.mean(part**2) / (np.mean(rest**2) + EPS) + EPS)))
    return out


def write_wav_atomic(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit wav written atomically from the array's own dtype (one name for tests to intercept)."""
    write_audio_atomic(path, samples, sample_rate, subtype="PCM_16")


def mixture_parts(mix_type: str, sources: list[np.ndarray], noise: np.ndarray | None) -> list[np.ndarray]:
    """What each mixture type sums: all sources, sources + noise, or the first source + noise."""
    if mix_type == "mix_clean":
        return sources
    if mix_type == "mix_both":
        return [*sources, noise]
    return [sources[0], noise]


def generate_row(config: GenerationConfig, split_dir: Path, row: MixtureRow) -> RowResult:
    """Compute and write every file of one mixture; returns its length and SNRs for the metadata."""
    gains = list(row.source_gains) + ([row.noise_gain] if config.needs_noise else [])
    parts = transform_signals(load_inputs(row, config), gains, config.sample_rate, config.mode)
    sources, noise = parts[: config.n_src], (parts[-1] if config.needs_noise else None)
    name = f"{row.mixture_id}.wav"
    written = {f"s{i + 1}": s for i, s in enumerate(sources)} | (
        {"noise": noise} if noise is not None else {}
    )
    result = RowResult(row.mixture_id, len(sources[0]), list(config.types), inputs=row.inputs_key(config))
    for mix_type in config.types:
        to_mix = mixture_parts(mix_type, sources, noise)
        written[mix_type] = mix(to_mix)
        result.snrs[mix_type] = snr_list(written[mix_type], to_mix)
    for folder, samples in written.items():
        result.clipped |= bool(np.max(np.abs(samples)) > 1.0)
        write_wav_atomic(split_dir / folder / name, samples, config.sample_rate)
    return result


def load_journal(path: Path) -> dict[str, RowResult]:
    """Finished rows recorded by earlier runs (a torn last line from a killed run is ignored)."""
    done: dict[str, RowResult] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                done[entry["mixture_id"]] = RowResult(**entry)
            except (ValueError, TypeError, KeyError, RecursionError):
                continue
    return done


def is_complete(result: RowResult | None, row: MixtureRow, config: GenerationConfig, split_dir: Path) -> bool:
    """Whether a journaled row was made from ``row``'s inputs and gains, covers the asked types, and all its
    files read back with the right length (a CSV edited between runs regenerates the rows it changed)."""
    if result is None or result.inputs != row.inputs_key(config) or not set(config.types) <= set(result.types):
        return False
    for folder in config.folders():
        try:
            info = sf.info(str(split_dir / folder / f"{result.mixture_id}.wav"))
        except (sf.LibsndfileError, RuntimeError):
            return False
        if (info.frames, info.samplerate, info.channels) != (result.length, config.sample_rate, 1):
            return False
    return True


def check_inputs(rows: list[MixtureRow], config: GenerationConfig, metadata_csv: Path, workers: int = 1) -> None:
    """Raise naming an input path of ``metadata_csv`` that leads out of its corpus root, the missing inputs,
    or those whose header is unreadable or not 16 kHz, before any work starts (rather than hours into a run;
    a bad rate or header failed after the earlier rows were written)."""
    paths = set()
    for row in rows:
        for i, source in enumerate(row.source_paths):
            where = f"{metadata_csv}:{row.line}: source_{i + 1}_path"
            paths.add(path_inside(config.librispeech_dir, source, where))
        if config.needs_noise:
            paths.add(path_inside(config.wham_dir, row.noise_path, f"{metadata_csv}:{row.line}: noise_path"))
    missing = sorted(str(p) for p in paths if not p.is_file())
    if missing:
        hint = ""
        if any("sp08" in p or "sp12" in p for p in missing):
            hint = " (the *sp08/*sp12 WHAM! train files come from LibriMix's augment_train_noise.py)"
        listed = "; ".join(missing[:3])
        raise UserError(f"{len(missing)} input file(s) missing{hint}, e.g. {listed}")
    probes = probe_many(sorted(paths), workers, decode=False, desc="checking inputs")
    bad = [f"{p.path}: {p.error or f'{p.sample_rate} Hz, not {RATE}'}" for p in probes.values()
           if p.error is not None or p.sample_rate != RATE]  # fmt: skip
    if bad:
        raise UserError(f"{len(bad)} input file(s) unusable (LibriMix reads {RATE} Hz audio), e.g. {bad[0]}")


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    """CSV text with ``\\n`` line ends (as pandas writes the official files)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_split_metadata(
    config: GenerationConfig, split: str, rows: list[MixtureRow], done: dict[str, RowResult]
) -> None:
    """Write ``metadata/mixture_<split>_<type>.csv`` and ``metrics_<split>_<type>.csv`` in row order."""
    split_dir = Path(os.path.abspath(config.mode_dir / split))
    for mix_type in config.types:
        sources = [f"s{i + 1}" for i in range(1 if mix_type == "mix_single" else config.n_src)]
        parts = sources + ([] if mix_type == "mix_clean" else ["noise"])
        names = [f"source_{i + 1}" for i in range(len(sources))] + (["noise"] if "noise" in parts else [])
        mixture_rows, metric_rows = [], []
        for row in rows:
            result, wav = done[row.mixture_id], f"{row.mixture_id}.wav"
            paths = [str(split_dir / folder / wav) for folder in [mix_type, *parts]]
            mixture_rows.append([row.mixture_id, *paths, str(result.length)])
            metric_rows.append([row.mixture_id, *(str(np.float32(v)) for v in result.snrs[mix_type])])
        header = ["mixture_ID", "mixture_path", *(f"{n}_path" for n in names), "length"]
        metadata = config.mode_dir / "metadata"
        atomic_write_text(metadata / f"mixture_{split}_{mix_type}.csv", csv_text(header, mixture_rows))
        snr_header = ["mixture_ID", *(f"{n}_SNR" for n in names)]
        atomic_write_text(metadata / f"metrics_{split}_{mix_type}.csv", csv_text(snr_header, metric_rows))


def metadata_names(config: GenerationConfig, split: str) -> list[str]:
    """Names of the metadata CSVs :func:`write_split_metadata` writes for ``split``."""
    return [f"{kind}_{split}_{mix_type}.csv" for mix_type in config.types for kind in ("mixture", "metrics")]


@dataclass(frozen=True)
class SplitReport:
    """Outcome of one split: rows asked for, generated now, found finished, clipped, seconds taken."""

    split: str
    num_rows: int
    num_generated: int
    num_resumed: int
    num_clipped: int
    seconds: float


def generate_split(
    config: GenerationConfig, metadata_csv: Path, limit: int | None = None, workers: int = 1
) -> SplitReport:
    """Generate (or finish) one split from one official metadata CSV.

    Args:
        config: what to generate and where.
        metadata_csv: an official ``libri{n}mix_<subset>.csv``.
        limit: only the first ``limit`` rows (metadata CSVs then list only those).
        workers: worker processes.

    Raises:
        UserError: the CSV lists no mixtures, a metadata column or input file is missing, a row names a
            file outside the output folders or an input outside its corpus root, or an input cannot be read.
    """
    start = time.perf_counter()
    split = split_name(metadata_csv, config.n_src)
    all_rows = read_metadata_csv(metadata_csv, config.n_src)
    if not all_rows:  # exit 0 with empty metadata CSVs, found only when training read them
        raise UserError(f"{metadata_csv}: lists no mixtures")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    rows = all_rows[:limit]
    check_inputs(rows, config, metadata_csv, workers)
    split_dir = config.mode_dir / split
    wavs = {f"{row.mixture_id}.wav" for row in all_rows}
    for folder in config.folders():
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
        remove_temp_files(split_dir / folder, wavs)
    remove_temp_files(config.mode_dir / "metadata", set(metadata_names(config, split)))
    journal = split_dir / JOURNAL_NAME
    done = load_journal(journal)
    pending = [row for row in rows if not is_complete(done.get(row.mixture_id), row, config, split_dir)]
    with journal.open("a", encoding="utf-8") as handle:
        if handle.tell() > 0 and not journal.read_bytes().endswith(b"\n"):
            handle.write("\n")  # ends a line torn by a killed run (load_journal skips it)
        work = partial(generate_row, config, split_dir)
        for result in imap_with_progress(
            work, pending, len(pending), workers, f"{split} ({config.mode_dir.name})", unit="mixture"
        ):
            handle.write(json.dumps(result.__dict__) + "\n")
            handle.flush()
            done[result.mixture_id] = result
    write_split_metadata(config, split, rows, done)
    clipped = sum(done[row.mixture_id].clipped for row in rows)
    return SplitReport(
        split, len(rows), len(pending), len(rows) - len(pending), clipped, time.perf_counter() - start
    )
