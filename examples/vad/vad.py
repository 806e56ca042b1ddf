"""Frame-level voice activity: silero-vad (a packaged ONNX model) distilled into a small CNN.

The data is synthetic: sentences spoken by espeak-ng and flite voices, placed between silences
in clips of 5.12 s, with white or pink noise at 30, 20 or 10 dB SNR, at 16 kHz. The synthesis
timeline gives every 32 ms frame its ground truth (speech in the frame or not). Test clips are
spoken by voices that no training clip uses, in sentences no training clip uses.

Three rows, each scored per frame against the ground truth of the test voices:

- ``labels``: the student trained on the ground-truth frame labels alone (``bce``: binary
  cross-entropy with the split's 0/1 frame targets);
- ``kd``: the student distilled from silero-vad's frame probabilities (``bce_kd`` with
  ``teacher_probabilities: true``), read from a knowledge store that ``crossdistill.cache``
  wrote once, so no seed and no epoch runs the teacher again (the last seed is trained once
  more with silero online, to time what the store saves and check it changes nothing);
- ``teacher``: silero-vad itself.

    python examples/vad/vad.py [--out runs/vad] [--tiny] [--seeds 0 1 2]

Every student is a complete run (``OUT/runs/*``) evaluated by crossdistill on the test voices
(``eval.json``: per-frame accuracy, F1, macro-F1, agreement with silero); ``frame_metrics``
adds what the example looks at besides (errors near speech boundaries, macro-F1 by SNR).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from vad_teacher import SileroVAD, silero_parameters

import crossdistill
from crossdistill.data import Clips
from crossdistill.data.saved import save_split
from crossdistill.domains.speech import tts
from crossdistill.domains.speech.audio import read_wav, write_wav
from crossdistill.evaluate import binary_metrics

SAMPLE_RATE = 16_000
FRAME = 512  # 32 ms: silero-vad's chunk, and the frame of every label and output here
CLIP_FRAMES = 160
CLIP = FRAME * CLIP_FRAMES  # 5.12 s
SNRS_DB = (30.0, 20.0, 10.0)
NOISES = ("white", "pink")
# Held out: two espeak-ng accents and two flite voices that no training clip uses.
TEST_VOICES = (
    "espeak-ng:en-gb-scotland+m2:r160:p50",
    "espeak-ng:en-us-nyc+f1:r180:p55",
    "flite:rms:r170:p50",
    "flite:slt:r160:p50",
)
TINY_TRAIN_VOICES = (
    "espeak-ng:en-us:r160:p50",
    "espeak-ng:en-gb+f2:r160:p55",
    "flite:awb:r160:p50",
)
TINY_TEST_VOICES = ("espeak-ng:en-us-nyc+f1:r180:p55", "flite:slt:r160:p50")
PHRASES_PER_CLIP = 3  # candidates synthesized per clip; as many as fit are placed
PROBS = "probs"  # the teacher's Knowledge key: one speech probability per frame
DATA_FORMAT = 2  # bumped when the saved splits change: older ones are rebuilt


@dataclass(frozen=True)
class Setting:
    """Sizes of one benchmark: voices, clips, training."""

    train_voices: tuple[str, ...]
    test_voices: tuple[str, ...]
    train_clips_per_voice: int
    test_clips_per_voice: int
    epochs: int
    batch_size: int = 16
    lr: float = 3e-3


def setting(tiny: bool) -> Setting:
    """The full benchmark, or a tiny one for tests (a few clips, two epochs)."""
    if tiny:
        return Setting(TINY_TRAIN_VOICES, TINY_TEST_VOICES, 4, 3, 2, batch_size=4)
    voices = [v.key for v in tts.default_voices()]
    train = tuple(v for v in voices if v not in TEST_VOICES)
    return Setting(train, TEST_VOICES, 40, 40, 10)


# ------------------------------------------------------------------------------------ data


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct short WordNet example sentences (2 to 6 words), in a seeded order."""
    texts = crossdistill.load_source("sentences", "train", include=["examples"]).fields["text"]
    short = sorted({t for t in texts if 2 <= len(t.split()) <= 6 and t.isascii()})
    if len(short) < n:
        raise ValueError(f"only {len(short)} short sentences, {n} needed")
    order = np.random.default_rng(seed).permutation(len(short))[:n]
    return [short[i] for i in order]


def trim(samples: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """The samples between the first and last 10 ms frame within ``floor_db`` of the loudest:
    the synthesizers' own leading and trailing silence is not speech."""
    hop = SAMPLE_RATE // 100
    n = len(samples) // hop
    rms = np.sqrt((samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1))
    active = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return samples[active[0] * hop : (active[-1] + 1) * hop]


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white noise, or pink noise (power ∝ 1/f, shaped in the frequency domain)."""
    x = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(x)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        x = np.fft.irfft(spectrum, n)
    return x / np.sqrt(np.mean(x**2))


def mix(
    phrases: Sequence[np.ndarray], kind: str, snr_db: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """One clip: phrases placed after random silences, noise at ``snr_db`` below the speech
    power. Returns the waveform, the per-frame labels (1 where any sample of the 32 ms frame is
    speech) and how many phrases were placed."""
    wave = np.zeros(CLIP)
    speech = np.zeros(CLIP, dtype=bool)
    at, placed = int(rng.uniform(0.1, 0.8) * SAMPLE_RATE), 0
    for phrase in phrases:
        if at + len(phrase) > CLIP - SAMPLE_RATE // 10:
            break
        level = 10 ** (rng.uniform(-32, -20) / 20) / np.sqrt(np.mean(phrase**2))
        level = min(level, 0.9 / np.abs(phrase).max())  # no clipping
        wave[at : at + len(phrase)] = phrase * level
        speech[at : at + len(phrase)] = True
        at += len(phrase) + int(rng.uniform(0.3, 1.2) * SAMPLE_RATE)
        placed += 1
    power = np.mean(wave[speech] ** 2) if speech.any() else 10 ** (-26 / 10)
    wave = wave + noise(kind, CLIP, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    labels = speech.reshape(CLIP_FRAMES, FRAME).any(1)
    return np.clip(wave, -1, 1).astype(np.float32), labels, placed


def _clip_plan(voices: Sequence[str], per_voice: int, texts: list[str]) -> list[dict[str, Any]]:
    """Which voice, sentences, noise and SNR each clip gets (sentences used once per part)."""
    plan, k = [], 0
    for voice in voices:
        for i in range(per_voice):
            clip_texts = texts[k : k + PHRASES_PER_CLIP]
            k += PHRASES_PER_CLIP
            plan.append(
                {
                    "voice": voice,
                    "texts": clip_texts,
                    "noise": NOISES[i % len(NOISES)],
                    "snr_db": SNRS_DB[(i // len(NOISES)) % len(SNRS_DB)],
                }
            )
    return plan


def build_data(out: Path, s: Setting, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Synthesize the speech (``out/tts``), mix the clips and save the two splits
    (``out/data/{train,test}``, read back by the ``saved_split`` source). Kept once made."""
    data = out / "data"
    info_path = data / "info.json"
    if info_path.is_file() and all((data / p / "split.json").is_file() for p in ("train", "test")):
        info = json.loads(info_path.read_text())
        same = info["setting"] == asdict(s) and info["seed"] == seed
        if same and info.get("format") == DATA_FORMAT:
            return info
    n_train = len(s.train_voices) * s.train_clips_per_voice * PHRASES_PER_CLIP
    n_test = len(s.test_voices) * s.test_clips_per_voice * PHRASES_PER_CLIP
    texts = sentences(n_train + n_test, seed)  # train and test sentences are disjoint
    plans = {
        "train": _clip_plan(s.train_voices, s.train_clips_per_voice, texts[:n_train]),
        "test": _clip_plan(s.test_voices, s.test_clips_per_voice, texts[n_train:]),
    }
    items = [
        (t, tts.Voice.from_key(c["voice"])) for p in plans.values() for c in p for t in c["texts"]
    ]
    started = time.perf_counter()
    summary = tts.generate(items, out / "tts", workers=2, progress=progress)
    synth_s = time.perf_counter() - started
    spoken = {
        (r["text"], r["voice"]): out / "tts" / r["path"]
        for r in tts.read_manifest(out / "tts")
        if r["status"] == "ok"
    }
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {
        "setting": asdict(s),
        "seed": seed,
        "format": DATA_FORMAT,
        "synthesis_s": round(synth_s, 1),
    }
    info["tts"] = {"ok": summary.ok + summary.skipped, "failed": summary.failed}
    for part, plan in plans.items():
        waves, labels, placed = [], [], []
        for clip in plan:
            phrases = [
                trim(read_wav(spoken[(t, clip["voice"])])[0])
                for t in clip["texts"]
                if (t, clip["voice"]) in spoken
            ]
            wave, label, n = mix(phrases, clip["noise"], clip["snr_db"], rng)
            waves.append(wave)
            labels.append(label)
            placed.append(n)
        split = crossdistill.Split(
            {"audio": Clips.from_list(waves, SAMPLE_RATE, CLIP)},
            name=f"vad/{part}",
            # the targets: a 0/1 label per 32 ms frame, (clips, 160)
            targets=torch.tensor(np.stack(labels), dtype=torch.float32),
            meta={
                "voice": [c["voice"] for c in plan],
                "noise": [c["noise"] for c in plan],
                "snr_db": torch.tensor([c["snr_db"] for c in plan]),
                "phrases": torch.tensor(placed),
            },
        )
        save_split(split, data / part)
        for i in range(min(2, len(waves))):  # a few mixed clips to listen to
            write_wav(data / "listen" / f"{part}-{i}.wav", waves[i], SAMPLE_RATE)
        frames = np.stack(labels)
        info[part] = {
            "clips": len(plan),
            "voices": sorted({c["voice"] for c in plan}),
            "seconds": round(len(plan) * CLIP / SAMPLE_RATE, 1),
            "phrases": int(sum(placed)),
            "speech_frames": round(float(frames.mean()), 3),
        }
    data.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    return info


def load_data(out: Path) -> tuple[crossdistill.Split, crossdistill.Split]:
    """The saved train and test splits, through the ``saved_split`` data source."""
    path = str(out / "data")
    return (
        crossdistill.load_source("saved_split", "train", path=path),
        crossdistill.load_source("saved_split", "test", path=path),
    )


# ------------------------------------------------------------------------------- metrics


def by_snr(prob: torch.Tensor, truth: torch.Tensor, snr_db: torch.Tensor) -> dict[str, float]:
    """Macro-F1 of the clips at each SNR."""
    return {
        f"macro_f1_{snr:g}db": frame_metrics(prob[snr_db == snr], truth[snr_db == snr])["macro_f1"]
        for snr in sorted(set(snr_db.tolist()), reverse=True)
    }


def near_boundary(truth: torch.Tensor, frames: int = 2) -> torch.Tensor:
    """``(N, F)`` mask of the frames within ``frames`` of a change of the ground truth."""
    change = torch.zeros_like(truth, dtype=torch.bool)
    step = truth[:, 1:] != truth[:, :-1]
    change[:, 1:] |= step
    change[:, :-1] |= step
    near = change.clone()
    for k in range(1, frames + 1):
        near[:, k:] |= change[:, :-k]
        near[:, :-k] |= change[:, k:]
    return near


def frame_metrics(
    prob: torch.Tensor, truth: torch.Tensor, teacher: torch.Tensor | None = None
) -> dict[str, float]:
    """Per-frame accuracy and macro-F1 (speech / non-speech) at 0.5 of ``(N, F)`` tensors; the
    share of the errors within 64 ms of a speech/non-speech boundary (where the timeline's
    labels and a detector's onset and hangover conventions differ); and, given the teacher's
    probabilities, the fraction of frames on the same side of 0.5 as the teacher."""
    pred, real = prob > 0.5, truth > 0.5
    wrong = pred != real
    scored = binary_metrics(pred.reshape(-1, 1), real.reshape(-1, 1))  # what eval.json holds
    out = {
        "accuracy": scored["accuracy"],
        "macro_f1": scored["macro_f1"],
        "speech_f1": scored["f1"],
        "errors_near_boundary": (wrong & near_boundary(truth)).sum().item()
        / max(wrong.sum().item(), 1),
    }
    if teacher is not None:
        out["teacher_agreement"] = (pred == (teacher > 0.5)).float().mean().item()
    return out


@torch.no_grad()
def predict(
    model: nn.Module, split: crossdistill.Split, sigmoid: bool, batch: int = 32
) -> torch.Tensor:
    """``(N, F)`` probabilities of ``model`` on every clip of ``split``."""
    was = model.training
    model.eval()
    audio = split.fields["audio"]
    out = []
    for start in range(0, len(split), batch):
        x = torch.stack([audio[i] for i in range(start, min(start + batch, len(split)))])
        y = model(x)[..., 0]
        out.append(torch.sigmoid(y) if sigmoid else y)
    model.train(was)
    return torch.cat(out)


def frames_per_second(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Frames scored per second on one CPU thread (best of ``repeats``, after a warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            frames = model(x).shape[:2].numel()  # also the warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return frames / min(times)


# ----------------------------------------------------------------------------- training


def student(seed: int) -> nn.Module:
    """A fresh student, built by name so that its runs can rebuild it."""
    torch.manual_seed(seed)
    return crossdistill.build_model("vad_nets:vad_cnn", {})


def train(
    kind: str,
    seed: int,
    s: Setting,
    train_split: crossdistill.Split,
    test_split: crossdistill.Split,
    runs: Path,
    *,
    store: Path | None = None,
    teacher: crossdistill.Teacher | None = None,
) -> crossdistill.DistillResult:
    """One student, a complete run in ``runs`` evaluated on ``test_split``: ``labels`` (the
    ground truth alone, ``bce``), ``kd`` (silero's outputs from the ``store``, ``bce_kd``) or
    ``kd_online`` (the same with silero, the ``teacher``, run on every batch)."""
    kd = ("bce_kd", {"teacher": PROBS, "teacher_probabilities": True})
    common: dict[str, Any] = {
        "losses": ["bce"] if kind == "labels" else [kd],
        "eval_data": test_split,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "optimizer": {"name": "adamw", "lr": s.lr, "weight_decay": 1e-4},
        "seed": seed,
        "progress": False,
        "run_dir": runs / f"{kind}-seed{seed}",
    }
    if kind == "kd":
        return crossdistill.distill(None, student(seed), train_split, store=store, **common)
    return crossdistill.distill(teacher if kind == "kd_online" else None, student(seed),
                                train_split, **common)  # fmt: skip


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def benchmark(tiny: bool, seeds: list[int], out: Path) -> dict[str, Any]:
    """Build the data, cache the teacher, train both students per seed, score everything on
    the held-out voices; writes ``out/results.json`` and returns the same dict.

    The speech, the splits and the store under ``out`` are kept and reused by a later call (each
    is checked against what it was made from); the training runs in ``out/runs`` are replaced."""
    out = Path(out)
    shutil.rmtree(out / "runs", ignore_errors=True)  # a run directory is written once
    s = setting(tiny)
    started = time.perf_counter()
    info = build_data(out, s, progress=not tiny)
    train_split, test_split = load_data(out)

    teacher = crossdistill.Teacher(SileroVAD(), outputs=[PROBS])
    store = out / "store"
    t0 = time.perf_counter()
    crossdistill.cache(teacher, train_split, store, dtype="float32", batch_size=64, progress=False)
    cache_s = time.perf_counter() - t0

    truth = test_split.targets
    t0 = time.perf_counter()
    teacher_prob = predict(teacher.model, test_split, sigmoid=False)
    teacher_test_s = time.perf_counter() - t0
    speech, snr_db = truth > 0.5, test_split.meta["snr_db"]
    info["test"]["frames_near_boundary"] = round(near_boundary(truth).float().mean().item(), 3)
    rows: dict[str, Any] = {
        "teacher": frame_metrics(teacher_prob, truth)
        | by_snr(teacher_prob, truth, snr_db)
        | {
            "mean_prob_speech": teacher_prob[speech].mean().item(),
            "mean_prob_nonspeech": teacher_prob[~speech].mean().item(),
        }
    }
    per_seed: dict[str, list[dict[str, float]]] = {"labels": [], "kd": []}
    train_s: dict[str, float] = {"labels": 0.0, "kd": 0.0}
    models: dict[str, nn.Module] = {}
    for seed in seeds:
        for kind in per_seed:
            t0 = time.perf_counter()
            done = train(kind, seed, s, train_split, test_split, out / "runs", store=store)
            train_s[kind] += time.perf_counter() - t0
            models[kind] = done.student
            prob = predict(done.student, test_split, sigmoid=True)
            scores = frame_metrics(prob, truth, teacher_prob) | by_snr(prob, truth, snr_db)
            # crossdistill's own evaluation of the run (eval.json) scores the same frames
            scores["run_macro_f1"] = done.metrics["macro_f1"]
            per_seed[kind].append(scores)
    for kind, results in per_seed.items():
        rows[kind] = {k: _mean_std([r[k] for r in results]) for k in results[0]}
        rows[kind]["per_seed"] = results

    # What the store saved: the last seed's KD once more, with silero run on every batch.
    t0 = time.perf_counter()
    online = train(
        "kd_online", seeds[-1], s, train_split, test_split, out / "runs", teacher=teacher
    ).student
    online_s = time.perf_counter() - t0
    stored = models["kd"].state_dict()
    identical = all(torch.equal(v, stored[k]) for k, v in online.state_dict().items())

    last = models["kd"]
    x = torch.stack([test_split.fields["audio"][i] for i in range(min(16, len(test_split)))])
    speed = {
        "clips_per_batch": len(x),
        "teacher_frames_per_s": frames_per_second(teacher.model, x),
        "student_frames_per_s": frames_per_second(last, x),
    }
    speed["speedup"] = speed["student_frames_per_s"] / speed["teacher_frames_per_s"]
    result = {
        "tiny": tiny,
        "seeds": seeds,
        "epochs": s.epochs,
        "epoch_selection": "last",
        "data": info,
        "rows": rows,
        "parameters": {
            "teacher": silero_parameters(),
            "student": sum(p.numel() for p in last.parameters()),
        },
        "speed": speed,
        "store": {
            "cache_s": round(cache_s, 2),
            "kd_from_store_s": round(train_s["kd"] / len(seeds), 1),  # per seed
            "kd_online_s": round(online_s, 1),
            "online_identical_to_store": identical,
            "teacher_passes_avoided": len(seeds) * s.epochs - 1,
            "teacher_test_pass_s": round(teacher_test_s, 2),
        },
        "train_s": {k: round(v, 1) for k, v in train_s.items()},
        "total_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}",
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    """The results as a markdown table."""
    rows = result["rows"]
    n = len(result["seeds"])

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "—"
        if isinstance(value, dict):
            return f"{value['mean']:.4f} ± {value['std']:.4f}"
        return f"{value:.4f}"

    p, sp = result["parameters"], result["speed"]
    lines = [
        "| model | params | frames/s (1 thread) | macro-F1 | accuracy | agreement with teacher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, key in (
        ("silero-vad (teacher)", "teacher"),
        (f"student, labels only ({n} seeds)", "labels"),
        (f"student, KD from silero ({n} seeds)", "kd"),
    ):
        params = p["teacher"] if key == "teacher" else p["student"]
        speed = sp["teacher_frames_per_s"] if key == "teacher" else sp["student_frames_per_s"]
        row = rows[key]
        agreement = "1" if key == "teacher" else cell(row, "teacher_agreement")
        lines.append(
            f"| {name} | {params:,} | {speed:,.0f} | {cell(row, 'macro_f1')} | "
            f"{cell(row, 'accuracy')} | {agreement} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/vad"), help="where runs go")
    parser.add_argument("--tiny", action="store_true", help="a few clips, two epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    result = benchmark(args.tiny, args.seeds, args.out)
    print(table(result))
    print(f"total {result['total_s']} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
