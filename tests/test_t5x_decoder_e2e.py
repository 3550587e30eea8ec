"""T5X's own binaries on the decoder-only model: `python -m t5x.train | t5x.eval |
t5x.infer` with models/paligemma.gin, the same runs/ files and tasks as the
encoder-decoder (tests/test_t5x_e2e.py), nothing patched (subprocesses, as a user
runs them)."""

import glob
import json
import subprocess
import sys

import pytest

pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); these tests run its binaries")

from palimix.commands.gin_path import gin_dir  # noqa: E402
# The same task, lengths and steps as the encoder-decoder's runs: the demo's
# multilingual OCR task (13 languages).
from test_t5x_e2e import LENGTHS, MIXTURE, STEPS, TASK  # noqa: E402

pytestmark = [pytest.mark.t5x, pytest.mark.slow]


def _t5x(binary, run_file, cwd, *bindings):
    command = [
        sys.executable, "-m", f"t5x.{binary}", f"--gin_search_paths={gin_dir()}",
        "--gin_file=models/paligemma.gin", f"--gin_file=runs/{run_file}", "--gin_file=sizes/tiny_decoder.gin",
        f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        *(f"--gin.{b}" for b in bindings),
    ]
    # cwd: a fresh folder, so no local models/ runs/ sizes/ folder shadows the gin files.
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5x_decoder_train")
    model_dir = root / "model"
    _t5x(
        "train", "pretrain.gin", root, f"TRAIN_STEPS={STEPS}", "BATCH_SIZE=4", f"MODEL_DIR='{model_dir}'",
        f"CHECKPOINT_PERIOD={STEPS}", f"EVAL_PERIOD={STEPS}", "EVAL_STEPS=1", "WARMUP_STEPS=10",
    )
    return model_dir


def test_t5x_train_writes_a_decoder_only_checkpoint(model_dir):
    assert (model_dir / f"checkpoint_{STEPS}").is_dir()
    config = (model_dir / "config.gin").read_text()
    assert "t5x_model.PaliGemmaModel" in config and "pack = False" in config
    assert "MODEL_SIZE = 'tiny_decoder'" in config
    # Training evaluation ran on the mixture as a whole (mixture_training_eval_datasets).
    assert (model_dir / "training_eval" / MIXTURE).is_dir()


def test_t5x_infer_writes_predictions_per_task(model_dir, tmp_path):
    out = tmp_path / "infer"
    _t5x("infer", "infer.gin", tmp_path, f"CHECKPOINT_PATH='{model_dir}/checkpoint_{STEPS}'",
         f"INFER_OUTPUT_DIR='{out}'", "BATCH_SIZE=16")
    files = sorted(glob.glob(str(out / f"{TASK}-predict.jsonl-00000-of-00001")))
    assert len(files) == 1  # one per task
    with open(files[0], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(isinstance(r["prediction"], str) for r in rows)
    assert len({r["inputs"]["language"] for r in rows}) == 13
    assert {"inputs_pretokenized", "targets_pretokenized", "language", "kind", "id"} <= set(rows[0]["inputs"])
    # (That predictions hold the answer only, without the prompt, is checked in
    # tests/test_t5x_decoder_model.py: after 2 steps the model answers EOS at once.)


def test_t5x_eval_writes_per_task_per_language_metrics(model_dir, tmp_path):
    out = tmp_path / "eval"
    _t5x("eval", "eval.gin", tmp_path, f"CHECKPOINT_PATH='{model_dir}/checkpoint_{STEPS}'",
         f"EVAL_OUTPUT_DIR='{out}'", "BATCH_SIZE=16")
    metric_files = sorted(glob.glob(str(out / "inference_eval" / f"{TASK}-metrics.jsonl")))
    assert len(metric_files) == 1
    with open(metric_files[0], encoding="utf-8") as f:
        record = json.loads(f.readline())
    assert record["step"] == STEPS
    languages = {key.split("/", 1)[1] for key in record if key.startswith("examples/")}
    assert len(languages) == 13 and "en" in languages and "ar" in languages
    # The OCR kind's standard metrics (palimix.kinds), per language and their macro mean.
    for metric in ("anls", "exact_match"):
        assert {f"{metric}/{code}" for code in languages} | {f"{metric}/macro"} <= set(record)
        per_language = [record[f"{metric}/{code}"] for code in languages]
        assert all(0.0 <= value <= 100.0 for value in per_language)
        assert abs(record[f"{metric}/macro"] - sum(per_language) / len(per_language)) < 1e-6
    assert "anls" not in record  # No score over all languages at once.
