"""examples/vad end to end, tiny: silero-vad (ONNX) distilled into a frame-level CNN on synthetic
speech. Needs the silero-vad package, espeak-ng and flite, and WordNet (the sentences)."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

_threads = torch.get_num_threads()
pytest.importorskip("silero_vad")
torch.set_num_threads(_threads)  # silero_vad's __init__ sets torch to one thread, process-wide
pytest.importorskip("onnxruntime")
for program in ("espeak-ng", "flite"):
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed", allow_module_level=True)
if not Path("/usr/share/wordnet/data.noun").is_file():
    pytest.skip("WordNet (wordnet-base) is not installed", allow_module_level=True)

import crossdistill  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vad"


@pytest.fixture(scope="module")
def vad() -> Iterator[Any]:
    """The example's script ``vad`` (with ``vad_teacher`` and ``vad_nets``), its folder on
    sys.path as when it runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        yield importlib.import_module("vad")


@pytest.fixture(scope="module")
def result(vad: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("vad")
    return vad.benchmark(tiny=True, seeds=[0], out=out), out


def test_teacher_matches_the_package_reference(vad: Any, result: tuple[dict, Path]) -> None:
    """The batched teacher gives, for every clip, what silero-vad's own ONNX wrapper gives for
    that clip alone (state and context reset per clip, last chunk zero-padded): on speech of the
    tiny test split, and on noise of a length that is not whole chunks."""
    from silero_vad.utils_vad import OnnxWrapper

    teacher = sys.modules["vad_teacher"]
    reference = OnnxWrapper(str(teacher.packaged_file("silero_vad.onnx")), force_onnx_cpu=True)
    _, test = vad.load_data(result[1])
    speech = torch.stack([test.fields["audio"][i] for i in range(2)])
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (3, 5000))).float()
    silero = teacher.SileroVAD()
    peaks = []
    for wave, frames in ((speech, vad.CLIP_FRAMES), (noise, 10)):  # 10 = ceil(5000 / 512)
        probs = silero(wave)
        assert probs.shape == (len(wave), frames, 1)
        for i in range(len(wave)):
            expected = reference.audio_forward(wave[i : i + 1], 16_000)[0]
            torch.testing.assert_close(probs[i, :, 0], expected, rtol=0, atol=1e-6)
        peaks.append(probs.max().item())
    assert peaks[0] > 0.9 and peaks[1] < 0.5  # it hears the speech, not the noise


def test_frame_metrics_by_hand(vad: Any) -> None:
    prob = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.3, 0.3, 0.3, 0.3]])
    truth = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 1]])
    teacher = torch.tensor([[0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]])
    m = vad.frame_metrics(prob, truth, teacher)
    # predicted 1 0 1 0 0 0 0 0: errors at frames 2 and 7, both within 2 frames of a change
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["speech_f1"] == pytest.approx(2 * 1 / (2 + 2))
    assert m["macro_f1"] == pytest.approx((0.5 + 2 * 5 / (6 + 6)) / 2)
    assert m["errors_near_boundary"] == pytest.approx(1.0)
    assert m["teacher_agreement"] == pytest.approx(2 / 8)
    far = vad.frame_metrics(torch.tensor([[0.0] * 8]), torch.tensor([[1.0] + [0] * 7]))
    assert far["errors_near_boundary"] == pytest.approx(1.0)
    away = vad.frame_metrics(torch.tensor([[0.0] * 7 + [1.0]]), torch.tensor([[0.0] * 8]))
    assert away["errors_near_boundary"] == 0.0  # no change in the truth at all


def test_teacher_and_student_frames_align(vad: Any) -> None:
    student = crossdistill.build_model("vad_nets:vad_cnn", {})
    silero = vad.SileroVAD()
    for length in (vad.CLIP, vad.CLIP + 100, 3000):
        wave = torch.randn(2, length) * 0.01
        assert student(wave).shape == silero(wave).shape == (2, -(-length // 512), 1)


def test_benchmark_runs_end_to_end(result: tuple[dict[str, Any], Path]) -> None:
    res, out = result
    data = res["data"]
    assert set(data["train"]["voices"]).isdisjoint(data["test"]["voices"])
    assert data["tts"]["failed"] == 0 and data["train"]["phrases"] > 0
    assert 0.2 < data["test"]["speech_frames"] < 0.9  # speech and silence both present
    teacher = res["rows"]["teacher"]
    # silero hears the synthetic speech: high probability on speech frames, low elsewhere
    assert teacher["mean_prob_speech"] > 0.7 and teacher["mean_prob_nonspeech"] < 0.3
    assert teacher["macro_f1"] > 0.8
    for kind in ("labels", "kd"):
        row = res["rows"][kind]
        for key in ("macro_f1", "accuracy", "speech_f1", "teacher_agreement"):
            assert 0.0 <= row[key]["mean"] <= 1.0, (kind, key)
        assert len(row["per_seed"]) == 1
        # the run's own evaluation (eval.json) scores the same frames as the example does
        assert row["run_macro_f1"]["mean"] == pytest.approx(row["macro_f1"]["mean"])
        run = out / "runs" / f"{kind}-seed0"
        assert (run / "student.safetensors").is_file() and (run / "student.json").is_file()
    assert res["parameters"]["student"] < res["parameters"]["teacher"]
    assert res["speed"]["student_frames_per_s"] > 0 and res["speed"]["teacher_frames_per_s"] > 0
    assert res["epoch_selection"] == "last"
    assert (out / "store" / "manifest.json").is_file()
    # the cached outputs are silero's: training from the store and with silero online give the
    # same student, bit for bit (float32 store, CPU)
    assert res["store"]["online_identical_to_store"] is True
    assert (out / "results.json").is_file()


def test_saved_split_frames_match_the_teacher(vad: Any, result: tuple[dict, Path]) -> None:
    _, out = result
    train, test = vad.load_data(out)
    for split in (train, test):
        labels = split.targets
        assert labels.shape == (len(split), vad.CLIP_FRAMES)
        assert set(labels.unique().tolist()) <= {0.0, 1.0}
    wave = torch.stack([test.fields["audio"][i] for i in range(2)])
    knowledge = crossdistill.Teacher(vad.SileroVAD(), outputs=[vad.PROBS])(wave)
    assert knowledge[vad.PROBS].shape == (2, vad.CLIP_FRAMES, 1)


def test_the_recipe_caches_trains_and_scores_per_frame(
    vad: Any, result: tuple[dict, Path], tmp_path: Path
) -> None:
    """kd.yaml on the tiny data: silero cached once, the student trained from the store (with
    the teacher, then with no teacher at all) and scored per frame; and the labels-only
    baseline the README names."""
    from crossdistill.pipeline import cache_recipe, run_recipe

    _, out = result
    base = [
        f"data.params.path={out / 'data'}",
        f"store.path={tmp_path / 'store'}",
        f"output.dir={tmp_path / 'runs'}",
        "train.epochs=1",
        "train.progress=false",
        "data.batch_size=4",
    ]
    recipe = EXAMPLE / "kd.yaml"
    cache_recipe(crossdistill.load_recipe(recipe, base), progress=False)
    kd = run_recipe(crossdistill.load_recipe(recipe, base))
    assert {"accuracy", "macro_f1", "agreement", "teacher_macro_f1"} <= set(kd.metrics)
    alone = run_recipe(crossdistill.load_recipe(recipe, [*base, "teacher=null", "name=alone"]))
    assert alone.metrics["macro_f1"] == pytest.approx(kd.metrics["macro_f1"])
    labels = [*base, "teacher=null", "store=null", "losses=[{name: bce}]", "name=vad_labels"]
    baseline = run_recipe(crossdistill.load_recipe(recipe, labels))
    assert 0 <= baseline.metrics["macro_f1"] <= 1 and "agreement" not in baseline.metrics
