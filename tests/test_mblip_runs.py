"""mBLIP's training stages as gin runs (runs/mblip_warmup.gin, runs/mblip_instruct.gin),
through both engines on tiny sizes with a small Q-Former: `palimix train` (the embedded
runner; the instruct stage with its int8 frozen LM) and `python -m t5x.train` (a float
frozen LM: T5X differentiates every parameter). After a few steps the frozen parameters
are bit-identical to the initial ones and every trainable one has moved."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from palimix.models import lora
from tests.runner_env import clean_gin, runner_environment  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.slow

STEPS = 3
SMALL_QFORMER = dict(qformer_num_queries=4, qformer_depth=2, qformer_width=32, qformer_num_heads=4,
                     qformer_mlp_dim=48)
BINDINGS = [f"configs.get.{k} = {v}" for k, v in SMALL_QFORMER.items()]
# Stage -> (its run file, the names that train, whether the LM is stored in int8 there).
STAGES = {
    "warmup": ("runs/mblip_warmup.gin", ("language_projection/.*",), False),
    "instruct": ("runs/mblip_instruct.gin", lora.MBLIP_TRAINABLE, True),
}


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def _check_frozen_and_moved(before: dict, after: dict, patterns) -> None:
    assert before.keys() == after.keys()
    trains = {n for n in before if any(re.fullmatch(p, n) for p in patterns)}
    assert trains and trains != set(before)
    frozen = set(before) - trains
    changed_frozen = [n for n in frozen if not np.array_equal(before[n], after[n])]
    assert not changed_frozen, changed_frozen[:5]
    unmoved = [n for n in trains if np.array_equal(before[n], after[n])]
    assert not unmoved, unmoved[:5]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_palimix_train_runs_the_stage(stage, tmp_path):
    from palimix import cli
    from palimix.runner.loading import load_run

    run_file, patterns, int8 = STAGES[stage]
    run_dir = tmp_path / "run"
    args = ["train", "runner_fixture_colors", "--model_dir", str(run_dir), "--batch_size", "4",
            "--steps", str(STEPS), "--lengths", "inputs=8,targets=8,image=32", "--warmup_steps", "1",
            "--no_progress", "--gin_file", run_file, "--gin_file", "sizes/tiny.gin", "--gin", "IMAGE_SIZE = 32"]
    for binding in BINDINGS:
        args += ["--gin", binding]
    assert cli.main(args) == 0
    run = load_run(str(run_dir))
    definition = run.trainer.definition
    assert definition.trainable.trainable == tuple(patterns)
    assert definition.config.bridge == "qformer"
    before, after = _flat(run.trainer.init_params()), _flat(run.params)
    assert any(v.dtype == np.int8 for v in after.values()) == int8
    _check_frozen_and_moved(before, after, patterns)


@pytest.mark.t5x
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_t5x_train_runs_the_stage(stage, tmp_path):
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); this test runs its binary")
    from palimix.commands.gin_path import gin_dir
    from palimix.models.checkpoints import read_t5x_checkpoint

    run_file, patterns, _ = STAGES[stage]
    model_dir = tmp_path / "model"
    bindings = [
        # palimix_demo's OCR sub-mixture (tests/test_t5x_e2e.py), at its 64-pixel images.
        "MIXTURE_OR_TASK_NAME='palimix_demo_ocr'", "TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32, 'image': 64}",
        f"TRAIN_STEPS={STEPS}", "BATCH_SIZE=4", f"MODEL_DIR='{model_dir}'",
        f"CHECKPOINT_PERIOD={STEPS}", f"EVAL_PERIOD={STEPS}", "EVAL_STEPS=1", "WARMUP_STEPS=1",
        # T5X differentiates every parameter: the frozen LM stays float there.
        "configs.get.lm_int8_kernels=False", *(b.replace(" ", "") for b in BINDINGS)]
    command = [sys.executable, "-m", "t5x.train", f"--gin_search_paths={gin_dir()}",
               "--gin_file=models/pali.gin", "--gin_file=runs/pretrain.gin", f"--gin_file={run_file}",
               "--gin_file=sizes/tiny.gin", *(f"--gin.{b}" for b in bindings)]
    # cwd: a fresh folder, so no local models/ runs/ sizes/ folder shadows the gin files.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"'{patterns[0]}'" in (model_dir / "config.gin").read_text()

    # t5x.train saves the initial state as checkpoint_0.
    before, after = (read_t5x_checkpoint(str(model_dir), step) for step in (0, STEPS))
    _check_frozen_and_moved(before, after, patterns)
