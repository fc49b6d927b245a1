"""Compress a real pretrained speaker encoder under "embeddings stay within cosine 0.99".

The network is the one that ships inside the ``resemblyzer==0.1.4`` wheel (its ``pretrained.pt``:
``nn.LSTM(40, 256, 3)`` + ``Linear(256, 256)`` + ReLU, L2-normalized; GE2E-trained on real
speech). Install only the wheel, not its dependencies::

    pip install --no-deps resemblyzer==0.1.4
    python examples/speaker_encoder.py [--small]

Nothing is downloaded: the encoder is fed 40-band power mel frames (what resemblyzer's own
frontend computes with librosa, reproduced here with numpy) of speech synthesized here with a
source-filter model, one voice per synthetic speaker. The model outputs embeddings, not class
logits, so the example brings its own recovery loss (``1 - cosine`` to the reference's embedding)
and agreement metric (mean cosine to the reference's embedding over a split) and searches Prune +
int8 under ``disagreement <= 0.01`` (mean cosine >= 0.99). The figures are agreement with the
reference model on synthetic audio, not speaker-verification accuracy on real speech.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.signal import lfilter
from torch import nn

SR, N_FFT, HOP, N_MELS = 16000, 400, 160, 40  # resemblyzer.hparams: 16 kHz, 25 ms windows, 10 ms hop, 40 mels


class SpeakerEncoder(nn.Module):
    """resemblyzer's ``VoiceEncoder`` network without its device and audio handling."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def load_pretrained() -> SpeakerEncoder:
    """The wheel's weights, read as data only (``weights_only=True``: nothing in the file can run)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        sys.exit("this example needs the pretrained encoder: pip install --no-deps resemblyzer==0.1.4")
    state = torch.load(Path(spec.origin).parent / "pretrained.pt", map_location="cpu", weights_only=True)["model_state"]
    model = SpeakerEncoder()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})  # GE2E loss scalars
    return model.eval()


# -- the mel frontend: librosa's melspectrogram(power=2, htk=False, norm='slaney'), by hand because
#    librosa (and its numba stack) is a heavy dependency for 30 lines of numpy --------------------------

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    log_start, step = 1000.0 / (200.0 / 3), math.log(6.4) / 27.0
    return np.where(f >= 1000.0, log_start + np.log(np.maximum(f, 1e-10) / 1000.0) / step, f / (200.0 / 3))


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_start, step = 1000.0 / (200.0 / 3), math.log(6.4) / 27.0
    return np.where(m >= log_start, 1000.0 * np.exp(step * (m - log_start)), (200.0 / 3) * m)


def mel_filterbank() -> np.ndarray:
    """Slaney-style mel filters with area normalization, ``(40, 201)``."""
    fft_hz = np.linspace(0, SR / 2, 1 + N_FFT // 2)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SR / 2), N_MELS + 2))
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower, upper = -ramps[:-2] / np.diff(mel_hz)[:-1, None], ramps[2:] / np.diff(mel_hz)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]


FILTERS = mel_filterbank()
WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """Power mel spectrogram of a 16 kHz waveform, ``(frames, 40)``, centered frames."""
    padded = np.pad(wav.astype(np.float64), N_FFT // 2)
    starts = HOP * np.arange(1 + (len(padded) - N_FFT) // HOP)
    spectrum = np.abs(np.fft.rfft(padded[starts[:, None] + np.arange(N_FFT)] * WINDOW, axis=1)) ** 2
    return (spectrum @ FILTERS.T).astype(np.float32)


# -- a source-filter voice synthesizer --------------------------------------------------------------

VOWELS = np.array([(270, 2290, 3010), (390, 1990, 2550), (530, 1840, 2480), (660, 1720, 2410), (730, 1090, 2440),
                   (570, 840, 2410), (440, 1020, 2240), (300, 870, 2240), (640, 1190, 2390), (490, 1350, 1690)],
                  dtype=np.float64)  # (F1, F2, F3) Hz of ten vowels, adult male


def make_speaker(rng: np.random.Generator) -> dict:
    """A voice: pitch, vocal-tract length, formant idiosyncrasies, tilt, breathiness, rate, accent."""
    return {"f0": rng.uniform(80, 280), "f0_range": rng.uniform(0.02, 0.1), "vtl": rng.uniform(0.8, 1.3),
            "formant_dev": rng.normal(1.0, 0.1, size=3), "vowel_dev": rng.normal(1.0, 0.06, size=(len(VOWELS), 3)),
            "bw": rng.uniform(0.7, 1.6), "tilt": rng.uniform(0.3, 0.98), "breath": rng.uniform(0.0, 0.2),
            "jitter": rng.uniform(0.002, 0.02), "rate": rng.uniform(0.09, 0.22), "nasal": rng.uniform(0.0, 0.5),
            "f4": rng.uniform(3300, 4200), "vowel_pref": rng.dirichlet(np.full(len(VOWELS), 0.15))}


def _resonator(freq: float, bandwidth: float) -> tuple[list[float], list[float]]:
    r = math.exp(-math.pi * bandwidth / SR)
    return [1.0 - r], [1.0, -2 * r * math.cos(2 * math.pi * freq / SR), r * r]


def utterance(voice: dict, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Vowels with fricatives and stop gaps, on a glottal source with intonation; -30 dBFS."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    contour = voice["f0"] * (1 + voice["f0_range"] * (0.6 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.3))
                                                      - 0.4 * t / seconds))
    contour *= 1 + voice["jitter"] * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(contour / SR) % 1.0
    source = np.diff(np.where(phase < 0.6, np.sin(np.pi * phase / 0.6) ** 2, 0.0), prepend=0.0)  # glottal flow derivative
    source = lfilter([1.0], [1.0, -voice["tilt"]], source) + voice["breath"] * rng.standard_normal(n)
    out, state, start = np.zeros(n), None, 0
    while start < n:
        kind = rng.choice(["vowel", "fricative", "stop"], p=[0.7, 0.18, 0.12])
        length = int(SR * voice["rate"] * rng.uniform(0.6, 1.6) * (1.0 if kind == "vowel" else 0.45))
        end = min(n, start + max(length, 1))
        envelope = np.ones(end - start)
        ramp = min((end - start) // 4, int(0.015 * SR))
        if ramp > 0:
            envelope[:ramp], envelope[-ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
        if kind == "vowel":
            v = rng.choice(len(VOWELS), p=voice["vowel_pref"])
            freqs = list(VOWELS[v] * voice["vtl"] * voice["formant_dev"] * voice["vowel_dev"][v]) + [voice["f4"] * voice["vtl"]]
            state = state or [np.zeros(2) for _ in freqs]
            y = source[start:end]
            for k, (freq, width) in enumerate(zip(freqs, (60, 90, 120, 200))):
                b, a = _resonator(min(freq, SR / 2 - 200), width * voice["bw"])
                y, state[k] = lfilter(b, a, y, zi=state[k])
            b, a = _resonator(250, 100)
            out[start:end] = (y + voice["nasal"] * lfilter(b, a, source[start:end])) * envelope * rng.uniform(0.7, 1.0)
        elif kind == "fricative":
            b, a = _resonator(centre := rng.uniform(2500, 6500), centre * 0.4)
            out[start:end] = 0.3 * lfilter(b, a, rng.standard_normal(end - start)) * envelope
        start = end
    out += np.sqrt(np.mean(out**2)) * 10 ** (-rng.uniform(30, 45) / 20) * rng.standard_normal(n)  # 30-45 dB SNR
    return (out * 10 ** (-30 / 20) / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def speech(speakers: int, utterances: int, frames: int, crops: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``crops`` random ``frames``-long mel crops of each 1.6 s utterance; labels = speaker ids."""
    rng = np.random.default_rng(seed)
    inputs, labels = [], []
    for s in range(speakers):
        voice = make_speaker(rng)
        for _ in range(utterances):
            mels = mel_frames(utterance(voice, rng, 1.6))
            for start in rng.integers(0, len(mels) - frames + 1, size=crops):
                inputs.append(mels[start : start + frames])
                labels.append(s)
    return torch.from_numpy(np.stack(inputs)), torch.tensor(labels)


# -- what condensa needs for a model that outputs embeddings ------------------------------------------

def cosine_loss(output: torch.Tensor, teacher_output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Recovery loss: pull each embedding back onto the reference's (no speaker labels needed)."""
    return 1.0 - torch.nn.functional.cosine_similarity(output, teacher_output, dim=1).mean()


def mean_cosine(output: torch.Tensor, reference_output: torch.Tensor, labels: torch.Tensor) -> float:
    """Agreement: mean cosine similarity between compressed and reference embeddings."""
    return float(torch.nn.functional.cosine_similarity(output, reference_output, dim=1).mean())


def splits(small: bool):
    from condensa.data import IndexedTensorDataset, Splits

    sizes = {"train": (12, 3, 2), "val": (6, 2, 1), "test": (6, 2, 1)} if small else \
        {"train": (80, 6, 3), "val": (20, 4, 1), "test": (40, 6, 1)}  # speakers, utterances each, crops each
    made = {}
    for seed, (name, (speakers, utterances, crops)) in enumerate(sizes.items()):
        inputs, labels = speech(speakers, utterances, 50 if name == "train" else 100, crops, seed=100 + seed)
        made[name] = IndexedTensorDataset(inputs, labels, torch.arange(len(labels)))
    return Splits(made["train"], made["val"], made["test"], max(s for s, _, _ in sizes.values()), (100, N_MELS))


def main() -> None:
    from condensa import Compose, Prune, Quantize, Range
    from condensa.config import MetricsConfig
    from condensa.pipeline import Workspace
    from condensa.search import Constraint, Objective, search

    small = "--small" in sys.argv
    torch.manual_seed(0)
    workspace = Workspace(load_pretrained(), splits(small), metrics=MetricsConfig(agreement=mean_cosine),
                          recovery={"loss": cosine_loss, "epochs": 1 if small else 2, "batch_size": 16,
                                    **({"lr": 1e-4} if small else {})},
                          batch_size=64)
    layers = ("LSTM", "Linear")
    # the LSTM is fragile: density 0.9 alone drops the mean cosine to ~0.65 before recovery
    strategy = Compose([Prune(density=Range(0.5, 1.0), layers=layers),
                        Quantize("int8", layers=layers)])
    result = search(
        strategy,
        evaluate=lambda bound: workspace.evaluate(bound, split="val").metrics,
        objective=Objective("footprint_bytes", cheap=workspace.cheap_objective(strategy)),
        constraints=[Constraint("disagreement", 0.01)],  # mean cosine to the reference >= 0.99
        budget=2 if small else 10,
    )
    print(f"{'#':>2} {'prune.density':>13} {'mean cosine (val)':>17} {'ratio':>6}  feasible")
    for ev in result.evaluations:
        print(f"{ev.index:>2} {ev.knobs['prune.density']:>13.4f} {ev.metrics['agreement']:>17.4f} "
              f"{ev.metrics['compression_ratio']:>5.1f}x  {'yes' if ev.feasible else 'no'}")
    if not result.feasible:
        print(f"no strategy kept mean cosine >= 0.99: {result.message}")
        return
    final = workspace.evaluate(strategy.bind(result.best_knobs), split="test")
    m = final.metrics
    print(f"best: prune.density {result.best_knobs['prune.density']:.4f} + int8 -> {m['compression_ratio']:.1f}x smaller "
          f"({int(m['footprint_bytes']):,} of {int(m['reference_bytes']):,} bytes); mean cosine to the reference on "
          f"{len(workspace.splits.test)} test crops of unseen synthetic speakers: {m['agreement']:.4f}")


if __name__ == "__main__":
    main()
