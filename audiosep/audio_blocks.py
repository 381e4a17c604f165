"""Audio files read and resampled in blocks, so that an hour-long file never sits in memory whole.

:class:`CheckedAudio` opens a file, checks all of it once in blocks (frames the header promises,
finite samples, silence) and then hands out spans of frames, decoding forward only. :func:`resample_span`
gives samples ``[start, stop)`` of torchaudio's resampling of a whole signal from a span of the
input read with enough context: the same numbers as resampling everything at once (tested), in
memory that follows the span.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from audiosep.data.audio import resample
from audiosep.errors import UserError
from audiosep.io import soundfile_name

BLOCK_BYTES = 1 << 20  # bytes of float32 frames decoded per read
BLOCK_FRAMES = 1 << 16  # frames per block for callers that scan a file (256 KiB per channel as float32)
# Beyond +80 dBFS (full scale is 1) a sample is no recording but a corrupt float file's value: one at 1e30 let
# the peak limiter scale the whole output down to silence, exit 0 (a reviewer's file).
MAX_SAMPLE = 1e4

# torchaudio.functional.resample's defaults: its filter reaches ``ceil(6 * orig / (0.99 * min))`` input
# samples either side of an output frame (rates reduced by their gcd).
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99


class AudioError(UserError, ValueError):
    """This file cannot be used: ``reason`` says why, ``path`` names the file when known."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else Path(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


def resampled_length(length: int, orig_rate: int, new_rate: int) -> int:
    """Samples torchaudio's resampling of ``length`` samples returns: ``ceil(length * new / orig)``."""
    if orig_rate == new_rate:
        return length
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    return -(-length * new // orig)


def resample_span(
    read: Callable[[int, int], Tensor], length: int, orig_rate: int, new_rate: int, start: int, stop: int
) -> Tensor:
    """Samples ``[start, stop)`` of ``resample(x, orig_rate, new_rate)`` for ``x`` of ``length`` samples.

    ``read(a, b)`` returns ``x[..., a:b]``. The span is resampled from input frames aligned to the
    filter's stride, with at least the filter's reach of context on either side (or the signal's own
    ends, where torchaudio pads with zeros as well), so the result equals resampling all of ``x``.
    """
    if orig_rate == new_rate:
        return read(start, stop)
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    reach = math.ceil(_LOWPASS_WIDTH * orig / (_ROLLOFF * min(orig, new))) + 1
    context = -(-reach // orig)  # filter frames of context
    first_frame = max(0, start // new - context)
    last_frame = -(-stop // new) + context
    begin, end = first_frame * orig, min(length, last_frame * orig)
    resampled = resample(read(begin, end), orig_rate, new_rate)
    offset = first_frame * new
    return resampled[..., start - offset : stop - offset]


_FRAME_ALIGNED_WAV_FORMATS = frozenset({0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE})  # PCM, float, A/mu-law, ext.
# Sizes that writers to a pipe leave in a header they cannot go back to (ffmpeg: 0xFFFFFFFF, arecord:
# 0x7FFFFFFF, SoX: 0x7FFFF000; AU's "unknown size" is 0xFFFFFFFF): the data runs to the end of the file.
_PLACEHOLDER_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})
_W64_GUID_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")  # W64 chunk ids: four letters, then this
_W64_RIFF = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
# AIFC compression types whose COMM chunk counts sample frames (ima4 and the like count packets).
_FRAME_COUNTED_AIFC_TYPES = frozenset(
    {b"NONE", b"sowt", b"twos", b"raw ", b"in24", b"in32", b"fl32", b"FL32", b"fl64", b"FL64"}
    | {b"ulaw", b"ULAW", b"alaw", b"ALAW"}
)
_AU_SAMPLE_BYTES = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}  # mu-law, PCM 8-32, float, double, A-law


def _chunks(
    handle: BinaryIO, position: int, end: int, endian: str, w64: bool
) -> Iterator[tuple[bytes, int, int]]:
    """``(id, body offset, declared body size)`` of each RIFF/AIFF/W64 chunk from ``position`` on.

    The walk is bounded (4096 chunks), so a crafted file cannot make it loop for long; a W64 chunk id
    is given by its four letters.
    """
    header_size, size_code, align = (24, "Q", 8) if w64 else (8, "I", 2)
    for _ in range(4096):
        if position + header_size > end:
            return
        handle.seek(position)
        header = handle.read(header_size)
        chunk_id = header[:4] if not w64 or header[4:16] == _W64_GUID_TAIL else b""
        (size,) = struct.unpack(f"{endian}{size_code}", header[header_size - struct.calcsize(size_code) :])
        body = size - header_size if w64 else size
        if body < 0:
            return
        yield chunk_id, position + header_size, body
        position += header_size + body + (-body % align)


def _wave_frames(handle: BinaryIO, head: bytes, end: int) -> int | None:
    """Frames the ``data`` chunk of a RIFF/RIFX/RF64/W64 WAVE file declares (``None``: compressed, placeholder)."""
    w64 = head[:4] == b"riff"
    endian = ">" if head[:4] == b"RIFX" else "<"
    block_align = ds64_data_size = None
    for chunk_id, body, size in _chunks(handle, 40 if w64 else 12, end, endian, w64):
        handle.seek(body)
        if chunk_id == b"ds64":
            fields = handle.read(16)
            if len(fields) == 16:
                ds64_data_size = struct.unpack("<QQ", fields)[1]
        elif chunk_id == b"fmt ":
            fields = handle.read(14)
            if len(fields) == 14:
                format_tag, block_align = struct.unpack(f"{endian}H10xH", fields)
                if format_tag not in _FRAME_ALIGNED_WAV_FORMATS:  # compressed: blocks != frames
                    return None
        elif chunk_id == b"data":
            if head[:4] == b"RF64" and size == 0xFFFFFFFF and ds64_data_size is not None:
                size = ds64_data_size
            elif not w64 and size in _PLACEHOLDER_SIZES:
                return None
            return size // block_align if block_align else None
    return None


def _aiff_frames(handle: BinaryIO, head: bytes, end: int) -> int | None:
    """Sample frames the ``COMM`` chunk of an AIFF/AIFC file declares (``None``: compressed, placeholder)."""
    for chunk_id, body, _ in _chunks(handle, 12, end, ">", False):
        if chunk_id == b"COMM":
            handle.seek(body)
            fields = handle.read(22)
            (frames,) = struct.unpack(">2xI", fields[:6])
            compression = fields[18:22] if head[8:12] == b"AIFC" else b"NONE"
            if compression not in _FRAME_COUNTED_AIFC_TYPES or frames in _PLACEHOLDER_SIZES:
                return None
            return frames
    return None


def _au_frames(head: bytes) -> int | None:
    """Frames the header of an AU file declares (``None``: a compressed encoding, the unknown size)."""
    endian = ">" if head[:4] == b".snd" else "<"
    data_size, encoding, _, channels = struct.unpack(f"{endian}4I", head[8:24])
    sample_bytes = _AU_SAMPLE_BYTES.get(encoding)
    if sample_bytes is None or channels == 0 or data_size in _PLACEHOLDER_SIZES:
        return None
    return data_size // (sample_bytes * channels)


def _nist_frames(handle: BinaryIO) -> int | None:
    """Frames a NIST SPHERE header declares (``sample_count``; ``None``: compressed, or no count)."""
    handle.seek(0)
    fields = dict(
        (parts[0], parts[-1])
        for parts in (line.split() for line in handle.read(1024).decode("latin-1").splitlines())
        if len(parts) == 3
    )
    if "shorten" in fields.get("sample_coding", "") or not fields.get("sample_count", "").isdigit():
        return None
    return int(fields["sample_count"])  # per channel, as libsndfile counts frames


_LOG_DECLARED_FRAMES = re.compile(r"^\s*Frames\s*:\s*(\d+)\s*$", re.M)
_FRAMES_IN_LOG_FORMATS = {"AVR", "MPC2K"}  # their headers state frames, which only libsndfile's log shows


def declared_frames(path: Path) -> int | None:
    """The frames ``path``'s header declares (see :func:`_declared_frames`), or ``None``: to tell a truncated
    file from a complete shorter one after reading it with ``soundfile``, which cannot."""
    with sf.SoundFile(soundfile_name(path)) as audio:
        return _declared_frames(path, audio)


def _declared_frames(path: Path, audio: sf.SoundFile) -> int | None:
    """Frames a WAV, W64, AIFF, AU, NIST SPHERE, AVR or MPC2K header declares, or ``None`` (another
    format, no size stated).

    libsndfile quietly shortens a data chunk that runs past the end of the file, so a truncated file
    would read as a shorter, complete one; this reads the declared size itself.
    """
    if audio.format in _FRAMES_IN_LOG_FORMATS:
        found = _LOG_DECLARED_FRAMES.search(audio.extra_info)
        return int(found.group(1)) if found else None
    try:
        end = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(40)
            if head[:8] == b"NIST_1A\n":
                return _nist_frames(handle)
            if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
                return _wave_frames(handle, head, end)
            if head[:16] == _W64_RIFF and head[24:40] == b"wave" + _W64_GUID_TAIL:
                return _wave_frames(handle, head, end)
            if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                return _aiff_frames(handle, head, end)
            if head[:4] in (b".snd", b"dns."):
                return _au_frames(head)
    except (OSError, struct.error):
        return None
    return None


def _ogg_unfinished(path: Path) -> bool:
    """Whether ``path`` is an Ogg file in which a logical stream has no complete end-of-stream page.

    A cut Ogg file decodes as a shorter, complete one, and libsndfile's log does not always say so (not
    when the cut falls inside the last page), so this walks the page headers itself.
    """
    try:
        end = path.stat().st_size
        unfinished: set[int] = set()  # serial numbers of streams begun and not yet ended
        with path.open("rb") as handle:
            position = 0
            while position + 27 <= end:
                handle.seek(position)
                header = handle.read(27)
                if header[:4] != b"OggS":
                    break
                flags, (serial,), segments = header[5], struct.unpack("<I", header[14:18]), header[26]
                lacing = handle.read(segments)
                position += 27 + segments + sum(lacing)
                if len(lacing) < segments or position > end:  # the page is cut
                    break
                if flags & 0x02:  # beginning of stream
                    unfinished.add(serial)
                if flags & 0x04:  # end of stream
                    unfinished.discard(serial)
    except (OSError, struct.error):
        return False
    return bool(unfinished)


_LOG_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size|riff|BODY)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_LOG_TRUNCATED = re.compile(r"seems to be (?:a )?truncated", re.I)  # VOC, MAT4


def _log_says_truncated(extra_info: str) -> bool:
    """libsndfile's log notes a data chunk (W64: the whole file; 8SVX: the BODY) longer than the file,
    placeholders aside, or says the file seems truncated."""
    return bool(_LOG_TRUNCATED.search(extra_info)) or any(
        int(declared) > int(actual) and int(declared) not in _PLACEHOLDER_SIZES
        for declared, actual in _LOG_SHORT_CHUNK.findall(extra_info)
    )


_OGG_CUT = "the Ogg stream stops before its end-of-stream page"


def _unmeasured_truncation(path: Path, extra_info: str) -> str | None:
    """How a file whose header states no length shows it is cut short, or ``None`` when it does not.

    Without a declared length only the file's own end marks tell: an Ogg stream's end-of-stream page,
    a chunk size that libsndfile's log finds past the end of the file.
    """
    if _ogg_unfinished(path):
        return _OGG_CUT
    if _log_says_truncated(extra_info):
        return "a chunk runs past the end of the file"
    return None


def _libsndfile_message(err: Exception) -> str:
    message = getattr(err, "error_string", None) or str(err)
    return message.strip().rstrip(".")


def _open(path: Path) -> sf.SoundFile:
    """``soundfile.SoundFile(path)`` with one-line errors for missing, empty, unknown and corrupt files."""
    if not path.exists():
        raise AudioError("no such file", path)
    if path.is_dir():
        raise AudioError("is a directory, not an audio file", path)
    if not path.is_file():
        raise AudioError("not a regular file", path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)", path)
    try:
        return sf.SoundFile(soundfile_name(path))
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        message = _libsndfile_message(err)
        if _ogg_unfinished(path):  # libsndfile cannot open some cut Ogg files at all
            raise AudioError(f"truncated: {_OGG_CUT}, libsndfile cannot open it ({message})", path) from err
        lowered = message.lower()
        kind = (
            "unknown or unsupported format: "
            if "not recognised" in lowered or "not supported" in lowered
            else "corrupt file: "
            if "malformed" in lowered or "error in" in lowered
            else ""
        )
        raise AudioError(f"cannot read audio ({kind}{message})", path) from err


MIXDOWN_LOSS_WARN_DB = 20.0  # a mixdown this much quieter than unrelated channels would give has lost the signal


def mixdown_loss_db(mixdown_energy: float, channel_energy: float) -> float:
    """``10 log10(channel / mixdown energy)``: 0 where nothing cancels, inf where everything does."""
    if channel_energy <= 0.0:
        return 0.0
    return math.inf if mixdown_energy <= 0.0 else 10.0 * math.log10(channel_energy / mixdown_energy)


def channels_cancel(loss_db: float, channels: int) -> bool:
    """Whether a mixdown's loss means its channels cancel: :data:`MIXDOWN_LOSS_WARN_DB` beyond the
    ``10 log10(C)`` dB that the mean of ``C`` unrelated channels loses anyway (128 channels of noise: 21 dB)."""
    return channels > 1 and loss_db >= MIXDOWN_LOSS_WARN_DB + 10.0 * math.log10(channels)


def cancelling_channels_warning(what: str, channels: int, loss_db: float, advice: str) -> str | None:
    """The warning for channels that cancel in the mono mixdown (a stereo file with one channel inverted), or
    None where they do not (:func:`channels_cancel`); ``advice`` says what to do instead."""
    if not channels_cancel(loss_db, channels):
        return None
    below = "silent" if math.isinf(loss_db) else f"{loss_db:.0f} dB below them"
    return f"{what}: its {channels} channels cancel in the mono mixdown ({below}: one of opposite polarity?); {advice}"


MAX_RATE = (1 << 31) - 1  # Hz: what a WAV header (and libsndfile) can hold


def check_sample_rate(sample_rate: object, error: type[AudioError] = AudioError) -> int:
    """``sample_rate`` as an int; ``error`` unless it is a whole number of Hz in 1..:data:`MAX_RATE` (not a
    string, 0, 8000.5 or 1e300)."""
    number = sample_rate if isinstance(sample_rate, int | float | np.integer | np.floating) else None
    if (isinstance(sample_rate, bool) or number is None or not math.isfinite(number) or not float(number).is_integer()
            or not 1 <= number <= MAX_RATE):  # fmt: skip
        raise error(f"sample rate {sample_rate!r}: a whole number of Hz from 1 to {MAX_RATE} is needed")
    return int(number)


def kind_of(value: object) -> str:
    """What an argument is, for an error message: a tensor's dtype and shape, else its type."""
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def mono_waveform(waveform: object, what: str, advice: str, logger: logging.Logger,
                  error: type[AudioError] = AudioError) -> Tensor:  # fmt: skip
    """A float ``[T]`` or ``[C, T]`` tensor averaged to mono float32; other inputs raise ``error``. ``logger`` says
    that channels were mixed down, and warns (with ``advice``) where they cancel, naming the input ``what``.

    Why refuse integer PCM rather than guess its scale: ``[T]`` int16 was processed at 32768 times speech
    level, ``[C, T]`` failed inside ``mean``; and ``[T, C]`` (soundfile's layout) was averaged over time into
    a few samples (reviewers).
    """
    if not isinstance(waveform, Tensor) or not waveform.is_floating_point():
        raise error(f"the waveform must be a float tensor in [-1, 1], got {kind_of(waveform)} (read files with "
                    "dtype='float32')")  # fmt: skip
    if waveform.dim() not in (1, 2) or waveform.shape[0] == 0:
        raise error(f"the waveform must be [T] or [C, T] with C >= 1, got shape {tuple(waveform.shape)}")
    if waveform.dim() == 2 and waveform.shape[0] > waveform.shape[1]:
        raise error(f"the waveform must be [C, T], got shape {tuple(waveform.shape)}: more channels than samples "
                    "(soundfile reads [T, C]: pass its .T)")  # fmt: skip
    if waveform.dim() == 1 or waveform.shape[0] == 1:
        return waveform.reshape(-1).float()
    channels = waveform.shape[0]
    logger.info("%s: mixing %d channels down to mono", what, channels)
    mono = waveform.float().mean(dim=0)
    # norms, not squares: no copy of the waveform (an hour of stereo is 1 GB in float64)
    channel_energy = float(torch.linalg.vector_norm(waveform.float(), dim=-1).square().mean())
    loss = mixdown_loss_db(float(torch.linalg.vector_norm(mono).square()), channel_energy)
    if warning := cancelling_channels_warning(what, channels, loss, advice):
        logger.warning(warning)
    return mono


def check_sample_values(waveform: Tensor, error: type[AudioError] = AudioError, limit: float = MAX_SAMPLE) -> None:
    """Raise ``error`` counting the NaN/Inf samples of a waveform, or those beyond ``limit`` (by default
    :data:`MAX_SAMPLE`: no recording, a corrupt value), if any."""
    if bool((waveform.abs() <= limit).all()):  # one pass for the usual input: False for NaN too
        return
    non_finite = int((~torch.isfinite(waveform)).sum())
    if non_finite:
        raise error(f"{non_finite} non-finite sample(s) (NaN/Inf) in the input")
    loud = int((waveform.abs() > limit).sum())
    raise error(f"{loud} sample(s) beyond +-{limit:g} (full scale is 1) in the input: not audio")


def resampled(waveform: Tensor, orig_rate: int, new_rate: int, error: type[AudioError] = AudioError) -> Tensor:
    """:func:`~audiosep.data.audio.resample`, whose refusal of a rate pair (a filter of gigabytes, e.g. 44101 Hz)
    is ``error`` here: the ``ValueError`` the Python APIs promise (it was a bare ``UserError``, reviewer)."""
    try:
        return resample(waveform, orig_rate, new_rate)
    except UserError as err:
        raise error(str(err)) from None


class CheckedAudio:
    """One audio file, checked whole in blocks on opening, then read span by span (in increasing order).

    ``channel`` (0-based) keeps one channel; ``None`` keeps them all. After opening, :attr:`frames`,
    :attr:`sample_rate`, :attr:`channels`, :attr:`silent` and :attr:`subtype` describe the used channels, and
    :meth:`read` returns any span as ``float32 [C, n]`` (integer and float subtypes alike).

    Raises (on opening):
        AudioError: missing, empty, unknown-format, corrupt or truncated file (fewer frames than its
            header promises), a channel out of range, no samples, or non-finite samples or samples beyond
            :data:`MAX_SAMPLE` (the first one's time is named).
    """

    def __init__(self, path: str | os.PathLike, channel: int | None = None) -> None:
        self.path = Path(path)
        self.handle = _open(self.path)
        try:
            self.sample_rate = int(self.handle.samplerate)
            self.subtype = str(self.handle.subtype)  # soundfile's name of the sample format, e.g. PCM_24
            available = int(self.handle.channels)
            if channel is not None and not 0 <= channel < available:
                raise AudioError(
                    f"channel {channel} does not exist: the file has {available} channel(s) (0-{available - 1})",
                    self.path,
                )
            self.channel = channel
            self.channels = 1 if channel is not None else available
            self._block = max(1024, BLOCK_BYTES // (4 * available))  # frames per read, whatever the channel count
            self.frames, self.silent, self.mixdown_loss_db = self._check()
            self._rewind()
        except BaseException:
            self.handle.close()
            raise

    def _used(self, block: np.ndarray) -> np.ndarray:
        return block if self.channel is None else block[:, self.channel : self.channel + 1]

    def _check(self) -> tuple[int, bool, float]:
        """Read every frame once: ``(frames, all zero, mixdown loss)``; raise on truncation and non-finite samples.

        The mixdown loss is how far (dB) the mono mixdown's energy lies below the channels' mean energy: 0 for
        one channel or identical ones, large where the channels cancel (one of opposite polarity).
        """
        handle, path, rate = self.handle, self.path, self.sample_rate
        declared = _declared_frames(path, handle)
        promised = int(handle.frames) if declared is None else declared  # libsndfile's: FLAC's header, Ogg's end
        unmeasured = None if declared is not None else _unmeasured_truncation(path, handle.extra_info)
        got, silent, mixdown_energy, channel_energy = 0, True, 0.0, 0.0
        while True:
            try:
                block = self._used(handle.read(self._block, dtype="float32", always_2d=True))
            except (RuntimeError, ValueError, TypeError, OSError) as err:
                raise AudioError(
                    f"truncated or corrupt: reading failed after {got} of {promised} frames "
                    f"({_libsndfile_message(err)})",
                    path,
                ) from err
            usable = np.abs(block) <= MAX_SAMPLE  # one pass: False for NaN, Inf and absurd values alike
            if not usable.all():
                frame, channel = (int(v) for v in np.argwhere(~usable)[0])
                what = ("non-finite sample(s) (NaN/Inf)" if not np.isfinite(block[frame, channel]) else
                        f"sample(s) beyond +-{MAX_SAMPLE:g} (+80 dBFS; full scale is 1)")  # fmt: skip
                frame += got
                raise AudioError(
                    f"{what}, first at {frame / rate:.3f} s "
                    f"(frame {frame}, channel {channel if self.channel is None else self.channel})",
                    path,
                )
            mixdown = block.mean(axis=1, dtype=np.float64)
            silent = silent and not mixdown.any()  # the mono mixdown: channels may cancel out
            mixdown_energy += float(np.dot(mixdown, mixdown))
            channel_energy += float(np.square(block, dtype=np.float64).sum()) / max(1, block.shape[1])
            got += block.shape[0]
            if block.shape[0] < self._block:
                break
        if got < promised:
            raise AudioError(
                f"truncated: the header promises {promised} frames ({promised / rate:.3f} s), "
                f"the file holds {got} ({got / rate:.3f} s)",
                path,
            )
        if unmeasured is not None:
            raise AudioError(
                f"truncated: {unmeasured}, so the promised length is unknown; "
                f"the file holds {got} frames ({got / rate:.3f} s)",
                path,
            )
        if got == 0:
            raise AudioError("holds no audio samples", path)
        return got, silent, mixdown_loss_db(mixdown_energy, channel_energy)

    def read(self, start: int, stop: int) -> Tensor:
        """Frames ``[start, stop)`` of the used channels as ``float32 [C, n]`` (clipped to the file).

        The file is decoded forward only (libsndfile's seeks are not sample-exact in OGG and MP3):
        frames from ``start`` on are kept, so that spans asked for in increasing order, overlapping or
        not, are each decoded once; a span that starts before the kept frames decodes again from the
        beginning.
        """
        start, stop = max(0, start), min(stop, self.frames)
        if stop <= start:
            return torch.zeros(self.channels, 0)
        if start < self._kept_start:
            self._rewind()
        kept_end = self._kept_start + self._kept.shape[0]
        if start >= kept_end:  # skip ahead: decode and drop
            self._decode(start - kept_end)
            self._kept, self._kept_start = self._kept[:0], start
        else:
            self._kept, self._kept_start = self._kept[start - self._kept_start :], start
        missing = stop - (self._kept_start + self._kept.shape[0])
        if missing > 0:
            self._kept = np.concatenate([self._kept, self._decode(missing)])
        return torch.from_numpy(np.ascontiguousarray(self._kept[: stop - start].T))

    def _rewind(self) -> None:
        """Back to the first frame: a seek, or a fresh handle where the codec cannot seek (GSM 6.10, G.721)."""
        try:
            if self.handle.seekable():
                self.handle.seek(0)
            else:
                self.handle.close()
                self.handle = _open(self.path)
        except (RuntimeError, ValueError, TypeError, OSError) as err:
            raise AudioError(f"cannot read it again from the start ({_libsndfile_message(err)})", self.path) from err
        self._kept, self._kept_start = np.zeros((0, self.channels), dtype=np.float32), 0

    def _decode(self, count: int) -> np.ndarray:
        """The next ``count`` frames of the used channels (``[count, C]``); the file must still hold them."""
        blocks, got = [np.zeros((0, self.channels), dtype=np.float32)], 0
        while got < count:
            want = min(count - got, self._block)
            try:
                block = self._used(self.handle.read(want, dtype="float32", always_2d=True))
            except (RuntimeError, ValueError, TypeError, OSError) as err:
                raise AudioError(f"reading failed at frame {self._kept_start + got} ({_libsndfile_message(err)})", self.path) from err
            if block.shape[0] != want:
                raise AudioError("changed while being read: it holds fewer frames than at first", self.path)
            blocks.append(block)
            got += want
        return np.concatenate(blocks) if len(blocks) > 2 else blocks[-1]

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> CheckedAudio:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
