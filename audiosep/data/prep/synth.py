"""Built-in synthetic English speech: eSpeak NG (via ``espeakng-loader``) driven through ctypes.

Why: the project needs a speech corpus with transcripts that exists on every machine without a
download, for the demo, the tests and smoke-training. eSpeak NG is small, fast (hundreds of times
real time on one core) and offers dozens of English accents and voice variants.

Determinism: the C library keeps synthesis state in static variables (pitch flutter phase, gain
control, breath noise from libc ``rand()``), so two identical calls on one loaded copy give
different samples. We therefore load a private copy of the library and reload it (``dlclose`` +
``dlopen``, well under a millisecond) at the start of every :func:`synthesize_batch` call, and seed
both random generators: a batch's output depends only on the batch.

Example:
    >>> voice = make_speakers(1, seed=0)[0]
    >>> wav = synthesize("the cat sat on the mat", voice, sample_rate=8000)  # Tensor[T] float32
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import functools
import multiprocessing.util
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchaudio

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 3, 4, 7
_EE_OK = 0
_BUFFER_MS = 1000  # audio handed to the callback per call: fewer, larger chunks

# t_espeak_callback: int (short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

ENGLISH_ACCENTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)
"""English voices shipped with eSpeak NG (British, American, Caribbean, Scottish, Lancastrian, West
Midlands, New York)."""

VARIANTS: tuple[str, ...] = tuple("""m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 klatt5
    klatt6 Alex Alicia Andrea Andy Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario
    Michael Mike Nguyen Reed Storm adam anika announcer antonio aunty belinda benjamin boris caleb david ed edward
    edward2 gustave grandma grandpa ian iven iven2 iven3 iven4 john kaukovalta linda marcelo max michel miguel
    mike2 norbert pablo paul pedro quincy rob robert sandro shelby steph steph2 steph3 travis victor zac""".split())
"""Voice variants (files in ``espeak-ng-data/voices/!v``) that sound like a human speaker; the
robotic, whispering, heavy-echo and novelty variants are left out on purpose."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak voice+variant and its prosody settings.

    Args:
        name: eSpeak voice name with an optional variant, e.g. ``"en-us+m3"``.
        pitch: 0-99; scales the voice's base pitch by about ``2 ** ((pitch - 50) / 50)``.
        pitch_range: intonation range, 0-100 (0 is monotone).
        rate: speaking rate in words per minute, 80-450.
        word_gap: extra pause between words in units of 10 ms.
    """

    name: str
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175
    word_gap: int = 0

    def __post_init__(self) -> None:
        for field, low, high in (("pitch", 0, 99), ("pitch_range", 0, 100), ("rate", 80, 450), ("word_gap", 0, 100)):
            value = getattr(self, field)
            if not low <= value <= high:
                raise ValueError(f"Voice.{field} must be in [{low}, {high}], got {value}")


class _Library:
    """A private copy of libespeak-ng: one per process, reloaded to reset its global state."""

    def __init__(self) -> None:
        import espeakng_loader

        self._dir = tempfile.mkdtemp(prefix="audiosep-espeak-")
        self._owner_pid = os.getpid()
        # A copy (own inode) guarantees nobody else holds a handle, so dlclose really unloads it.
        original = Path(espeakng_loader.get_library_path())
        self._path = shutil.copy(original, Path(self._dir) / f"audiosep-{original.name}")
        self._data_path = espeakng_loader.get_data_path().encode()
        self._collected: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_samples)  # must outlive every synthesis call
        self._libc = ctypes.CDLL(None)
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._libc.srand.restype = None
        self._lib: ctypes.CDLL | None = None
        self.native_rate = 0
        atexit.register(self._cleanup)
        # multiprocessing workers leave through os._exit (no atexit) but run these finalizers
        multiprocessing.util.Finalize(None, self._cleanup, exitpriority=0)

    def _on_samples(self, wav: ctypes.Array, num_samples: int, _events: int) -> int:
        if num_samples > 0:
            self._collected.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def reload(self) -> None:
        """Unload and load the library again: every static variable returns to its initial value."""
        self._unload()
        lib = ctypes.CDLL(self._path)
        _declare_signatures(lib)
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, self._data_path, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {self._data_path.decode()}")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.native_rate = lib, rate

    def _unload(self) -> None:
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _close_library(self._lib._handle)
            self._lib = None

    def speak(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        """Synthesise one text at the native rate; returns int16 samples."""
        lib = self._lib
        if lib is None:
            raise RuntimeError("the eSpeak library is not loaded: call reload() first")
        status = lib.espeak_SetVoiceByName(voice.name.encode())
        if status != _EE_OK:
            raise ValueError(f"eSpeak has no voice {voice.name!r} (status {status})")
        # SetVoiceByName resets the parameters: set them after it.
        for parameter, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                                 (_PARAM_RANGE, voice.pitch_range), (_PARAM_WORDGAP, voice.word_gap)):
            lib.espeak_SetParameter(parameter, value, 0)
        lib.espeak_ng_SetRandSeed(seed)
        self._libc.srand(seed & 0xFFFFFFFF)
        data = text.encode("utf-8") + b"\0"
        self._collected = []
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed (status {status}) for text {text[:60]!r}")
        return np.concatenate(self._collected) if self._collected else np.zeros(0, dtype=np.int16)

    def _cleanup(self) -> None:
        if os.getpid() == self._owner_pid:  # forked workers share the folder: only the owner removes it
            self._unload()
            shutil.rmtree(self._dir, ignore_errors=True)


def _declare_signatures(lib: ctypes.CDLL) -> None:
    """argtypes/restype of every function we call (the text size is a size_t)."""
    c_int, c_uint, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
    signatures = {
        "espeak_Initialize": ([c_int, c_int, ctypes.c_char_p, c_int], c_int),
        "espeak_SetSynthCallback": ([_SYNTH_CALLBACK], None),
        "espeak_SetVoiceByName": ([ctypes.c_char_p], c_int),
        "espeak_SetParameter": ([c_int, c_int, c_int], c_int),
        "espeak_ng_SetRandSeed": ([ctypes.c_long], c_int),
        # text, size, position, position_type, end_position, flags, unique_identifier, user_data
        "espeak_Synth": ([c_void_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint, ctypes.POINTER(c_uint), c_void_p],
                         c_int),
        "espeak_Synchronize": ([], c_int),
        "espeak_Terminate": ([], c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype


_close_library = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX / Windows
_library: _Library | None = None
_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a lock held by another thread at fork time would never be released


os.register_at_fork(after_in_child=_reset_after_fork)


def _get_library() -> _Library:
    """The process-wide library copy, created on first use (call with ``_lock`` held)."""
    global _library
    if _library is None:
        _library = _Library()
    return _library


@functools.lru_cache(maxsize=64)
def _resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_rate, new_rate)


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's sinc resampling with the kernel cached per rate pair (1.6x faster on short clips)."""
    if orig_rate == new_rate:
        return wav
    with torch.inference_mode():
        out = _resampler(orig_rate, new_rate)(wav)
    return out.clone()  # cloned outside inference mode: a normal tensor that autograd code may use


def native_sample_rate() -> int:
    """The rate eSpeak NG renders at (22050 Hz with the shipped data)."""
    with _lock:
        library = _get_library()
        if library.native_rate == 0:
            library.reload()
        return library.native_rate


def synthesize_batch(items: Sequence[tuple[str, Voice]], sample_rate: int = 8000, seed: int = 0) -> list[torch.Tensor]:
    """Synthesise several (text, voice) pairs on a freshly reloaded engine.

    The output depends only on ``items``, ``sample_rate`` and ``seed`` (not on earlier calls), so
    batching many short texts keeps the reload cost negligible and the result reproducible.

    Args:
        items: (text, voice) pairs; texts must be non-empty.
        sample_rate: output rate in Hz (eSpeak renders at 22050 Hz; torchaudio resamples).
        seed: seeds eSpeak's noise generators (item ``i`` uses ``seed + i``).

    Returns:
        One float32 Tensor[T] in [-1, 1] per item.

    Raises:
        ValueError: an empty text, an unknown voice or a non-positive sample rate.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    for text, _ in items:
        if not text.strip():
            raise ValueError(f"cannot synthesise an empty text, got {text!r}")
    with _lock:
        library = _get_library()
        library.reload()
        native = [library.speak(text, voice, seed + index) for index, (text, voice) in enumerate(items)]
        native_rate = library.native_rate
    waves = [torch.from_numpy(samples.astype(np.float32) / 32768.0) for samples in native]
    return [resample(wav, native_rate, sample_rate).clamp_(-1.0, 1.0) for wav in waves]


def synthesize(text: str, voice: Voice, sample_rate: int = 8000, seed: int = 0) -> torch.Tensor:
    """Synthesise one English text with one voice; returns float32 Tensor[T] in [-1, 1].

    Deterministic: the same arguments give the same samples. See :func:`synthesize_batch`.
    """
    return synthesize_batch([(text, voice)], sample_rate=sample_rate, seed=seed)[0]


@functools.lru_cache(maxsize=1)
def available_variants() -> tuple[str, ...]:
    """The subset of :data:`VARIANTS` present in the installed eSpeak NG data, in a fixed order."""
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return tuple(name for name in VARIANTS if (folder / name).is_file())


def make_speakers(n: int, seed: int) -> list[Voice]:
    """``n`` distinct speakers, deterministic for ``seed``.

    Each speaker gets its own (accent, variant) pair while there are enough pairs (8 accents x ~80
    variants), then pairs repeat with other prosody; pitch is drawn in 20..90, range in 20..100,
    rate in 120..220 wpm and the word gap in 0..2.

    Raises:
        ValueError: ``n`` is not positive.
    """
    if n <= 0:
        raise ValueError(f"number of speakers must be positive, got {n}")
    rng = np.random.default_rng(seed)
    pairs = [f"{accent}+{variant}" for accent in ENGLISH_ACCENTS for variant in available_variants()]
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(-(-n // len(pairs)))])
    return [Voice(name=pairs[order[index]], pitch=int(rng.integers(20, 91)), pitch_range=int(rng.integers(20, 101)),
                  rate=int(rng.integers(120, 221)), word_gap=int(rng.integers(0, 3))) for index in range(n)]


def jitter_voice(voice: Voice, rng: np.random.Generator, pitch: int = 8, pitch_range: int = 12,
                 rate: float = 0.1) -> Voice:
    """A per-utterance variation of ``voice``: pitch +-``pitch``, range +-``pitch_range``, rate +-``rate``.

    Why: a real speaker never says two sentences the same way; the jitter widens the prosody a
    separation model sees without changing who is speaking.
    """
    return replace(
        voice,
        pitch=int(np.clip(voice.pitch + rng.integers(-pitch, pitch + 1), 0, 99)),
        pitch_range=int(np.clip(voice.pitch_range + rng.integers(-pitch_range, pitch_range + 1), 0, 100)),
        rate=int(np.clip(round(voice.rate * (1.0 + rng.uniform(-rate, rate))), 80, 450)),
    )


_WORDS: dict[str, tuple[str, ...]] = {
    "det": tuple("the a this that every my your his her our their one another no".split()),
    "adj": tuple("""big small old young new long short red green blue yellow black white brown bright dark
        quiet loud happy sad angry tired busy lazy clever strange famous simple heavy light warm cold hot
        wet dry clean dirty empty full early late quick slow gentle careful rich poor strong weak soft
        hard sweet bitter fresh broken narrow wide deep tall little pretty ugly friendly lonely""".split()),
    "noun": tuple("""man woman child boy girl friend doctor teacher farmer driver captain soldier king queen
        baker sailor student neighbour stranger dog cat horse bird fish cow sheep rabbit mouse house
        garden river mountain forest road bridge village city station window door table chair book
        letter story song picture box basket bottle cup plate knife key coat hat shoe ship boat train
        car wagon bicycle flower tree stone field farm market shop church school office kitchen room
        bed lamp candle fire storm wind rain cloud morning evening winter summer apple bread cake milk
        water coffee money gold ring watch clock paper pencil map lesson question answer voice word
        dream secret plan gift engine machine island beach hill valley lake castle tower wall""".split()),
    "name": tuple("""john mary peter anna thomas sarah james laura david emma robert lucy michael alice
        william helen george grace henry clara edward rose frank ellen arthur martha walter susan
        charles nora""".split()),
    "verb_past": tuple("""found saw took bought sold carried opened closed painted cleaned watched followed
        visited remembered forgot needed wanted liked loved hated pushed pulled washed built broke
        mended lost kept showed brought sent wrote read heard called answered helped left chose caught
        held met""".split()),
    "verb_base": tuple("""find see take buy sell carry open close paint clean watch follow visit remember
        need want like push pull wash build mend keep show bring send write read hear call answer help
        leave choose catch hold meet""".split()),
    "verb_intr": tuple("""arrived laughed slept waited smiled shouted danced cried walked ran swam worked
        listened stayed returned appeared vanished whispered sang fell rested travelled hurried
        wandered""".split()),
    "adv": tuple("""quickly slowly quietly loudly carefully happily sadly suddenly finally again together
        alone outside inside today yesterday early late often rarely gently badly easily""".split()),
    "prep": tuple("in on near under behind beside across along above below inside outside with without".split()),
    "time": ("this morning", "last night", "after dinner", "before noon", "in the spring", "on monday",
             "at midnight", "every evening", "next week", "long ago", "at dawn", "in the winter"),
}

_CONJUNCTIONS = ("and", "but", "so", "then", "while", "because", "although", "until")

# Sentence templates: slot names are expanded, other tokens are literal words.
_TEMPLATES: tuple[tuple[str, ...], ...] = tuple(tuple(template.split()) for template in (
    "NP verb_past NP", "NP verb_past NP prep NP", "NP verb_intr adv", "NP verb_intr prep NP",
    "time NP verb_past NP", "NP will verb_base NP time", "did NP verb_base NP prep NP",
    "NP verb_past NP and NP verb_intr", "NP was adj because NP verb_past NP", "there was NP prep NP",
    "NP could not verb_base NP adv", "why did NP verb_base NP time", "NP verb_intr but NP verb_intr adv",
    "name said that NP verb_past NP", "please verb_base NP prep NP", "NP verb_intr adv while NP verb_past NP prep NP",
))


class SentenceGenerator:
    """Varied English sentences from a built-in vocabulary (~500 words) and simple grammar templates.

    Sentences are lowercase words separated by single spaces (no digits, no punctuation), so the
    text is also the exact transcript. Deterministic for a seed.

    Args:
        seed: random seed.
        min_words: shortest sentence, in words.
        max_words: longest sentence, in words.

    Example:
        >>> SentenceGenerator(seed=0).sentence()  # doctest: +SKIP
        'the quiet baker opened a basket near the river'
    """

    def __init__(self, seed: int, min_words: int = 4, max_words: int = 14) -> None:
        if not 3 <= min_words <= max_words:
            raise ValueError(f"need 3 <= min_words <= max_words, got {min_words} and {max_words}")
        self.min_words, self.max_words = min_words, max_words
        self._rng = np.random.default_rng(seed)

    def _pick(self, slot: str) -> str:
        options = _WORDS[slot]
        return options[int(self._rng.integers(len(options)))]

    def _noun_phrase(self) -> list[str]:
        kind = self._rng.random()
        if kind < 0.2:
            return [self._pick("name")]
        adjectives = [self._pick("adj") for _ in range(0 if kind < 0.55 else 1 if kind < 0.9 else 2)]
        words = [self._pick("det"), *adjectives, self._pick("noun")]
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words

    def _expand(self, template: tuple[str, ...]) -> list[str]:
        words: list[str] = []
        for token in template:
            if token == "NP":
                words += self._noun_phrase()
            elif token in _WORDS:
                words += self._pick(token).split()
            else:
                words.append(token)
        return words

    def _clause(self) -> list[str]:
        return self._expand(_TEMPLATES[int(self._rng.integers(len(_TEMPLATES)))])

    def sentence(self) -> str:
        """One sentence of ``min_words``..``max_words`` words (short clauses are joined by a conjunction)."""
        while True:  # clauses span 3-21 words: a few draws always land in range
            words = self._clause()
            while len(words) < self.min_words:
                words += [_CONJUNCTIONS[int(self._rng.integers(len(_CONJUNCTIONS)))], *self._clause()]
            if len(words) <= self.max_words:
                return " ".join(words)

    def sentences(self, n: int) -> list[str]:
        """``n`` sentences in order (the same as ``n`` calls of :meth:`sentence`)."""
        return [self.sentence() for _ in range(n)]
