"""T5X's own binaries on palimix: `python -m t5x.train | t5x.eval | t5x.infer` with the
gin files in palimix/gin, nothing patched (subprocesses, as a user runs them), for each
backbone: the encoder-decoder (models/pali.gin) and the decoder-only network
(models/paligemma.gin), on the same task with the same runs/ files."""

import glob
import json
import subprocess
import sys

import pytest

pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); these tests run its binaries")

from palimix.commands.gin_path import gin_dir  # noqa: E402

pytestmark = [pytest.mark.t5x, pytest.mark.slow]

# A sub-mixture of palimix_demo: its multilingual OCR task (13 languages); the whole
# demo only costs more pipeline builds, and the gin is the same.
MIXTURE = "palimix_demo_ocr"
TASK = "palimix_demo_ocr_mul"
LENGTHS = "{'inputs': 64, 'targets': 32, 'image': 64}"
STEPS = 2
# Backbone -> (its T5X model gin file, a size of it, its T5X model class).
BACKBONES = {
    "encoder_decoder": ("models/pali.gin", "sizes/tiny.gin", "t5x_model.PaliModel"),
    "decoder_only": ("models/paligemma.gin", "sizes/tiny_decoder.gin", "t5x_decoder_model.PaliGemmaModel"),
}


def _t5x(backbone, binary, run_file, cwd, *bindings):
    model_file, size_file, _ = BACKBONES[backbone]
    command = [
        sys.executable, "-m", f"t5x.{binary}", f"--gin_search_paths={gin_dir()}",
        f"--gin_file={model_file}", f"--gin_file=runs/{run_file}", f"--gin_file={size_file}",
        f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        *(f"--gin.{b}" for b in bindings),
    ]
    # cwd: a fresh folder, so no local models/ runs/ sizes/ folder shadows the gin files.
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def trained(request, tmp_path_factory):
    """(backbone, its model dir after t5x.train)."""
    root = tmp_path_factory.mktemp(f"t5x_train_{request.param}")
    model_dir = root / "model"
    _t5x(
        request.param, "train", "pretrain.gin", root, f"TRAIN_STEPS={STEPS}", "BATCH_SIZE=4",
        f"MODEL_DIR='{model_dir}'", f"CHECKPOINT_PERIOD={STEPS}", f"EVAL_PERIOD={STEPS}", "EVAL_STEPS=1",
        "WARMUP_STEPS=10",
    )
    return request.param, model_dir


def test_t5x_train_writes_a_checkpoint_and_mixture_eval(trained):
    backbone, model_dir = trained
    assert (model_dir / f"checkpoint_{STEPS}").is_dir()
    config = (model_dir / "config.gin").read_text()
    assert BACKBONES[backbone][2] in config and "pack = False" in config
    # Training evaluation ran on the mixture as a whole (mixture_training_eval_datasets).
    assert (model_dir / "training_eval" / MIXTURE).is_dir()


def test_t5x_infer_writes_predictions_per_task(trained, tmp_path):
    backbone, model_dir = trained
    out = tmp_path / "infer"
    _t5x(backbone, "infer", "infer.gin", tmp_path, f"CHECKPOINT_PATH='{model_dir}/checkpoint_{STEPS}'",
         f"INFER_OUTPUT_DIR='{out}'", "BATCH_SIZE=16")
    files = sorted(glob.glob(str(out / f"{TASK}-predict.jsonl-00000-of-00001")))
    assert len(files) == 1  # one per task
    with open(files[0], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(isinstance(r["prediction"], str) for r in rows)
    assert len({r["inputs"]["language"] for r in rows}) == 13
    assert {"inputs_pretokenized", "targets_pretokenized", "language", "kind", "id"} <= set(rows[0]["inputs"])


def test_t5x_eval_writes_per_task_per_language_metrics(trained, tmp_path):
    backbone, model_dir = trained
    out = tmp_path / "eval"
    _t5x(backbone, "eval", "eval.gin", tmp_path, f"CHECKPOINT_PATH='{model_dir}/checkpoint_{STEPS}'",
         f"EVAL_OUTPUT_DIR='{out}'", "BATCH_SIZE=16")
    # t5x.eval's seqio.Evaluator writes under <EVAL_OUTPUT_DIR>/inference_eval, one
    # file per task; the multilingual task's metric function scores each language on
    # its own (palimix.metrics.per_language), as `palimix eval` reports it.
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
