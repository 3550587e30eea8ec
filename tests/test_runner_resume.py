"""`kill -9` at any point + the same command again == the uninterrupted run.

Runs `palimix train` in subprocesses on a small real task (tests/runner_fixture_tasks.py):
once straight through, once killed with SIGKILL after step 7 (after the checkpoint at
step 6, mid-interval) and started again with the same command. The per-step losses of
both must be equal. The kill comes from the run itself ($PALIMIX_TEST_SIGKILL_AFTER_STEP),
so it happens at step 7 however fast the machine is.
"""

import os
import signal
import subprocess
import sys

import pytest

from palimix.runner.summaries import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
KILL_AFTER_STEP = 7  # Between the checkpoints at 6 and 9.


def _command(model_dir):
    return [sys.executable, "-m", "palimix.cli", "train", "runner_fixture_colors",
            "--module", "tests.runner_fixture_tasks", "--model_dir", str(model_dir),
            "--steps", str(STEPS), "--batch_size", "4", "--lengths", "inputs=8,targets=8,image=32",
            "--checkpoint_every", "3", "--keep_checkpoints", "2", "--log_every", "1",
            "--warmup_steps", "4", "--learning_rate", "0.01", "--no_progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ)
    env["PALIMIX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["PALIMIX_RUNNER_FIXTURE_DIR"] = str(tmp_path_factory.mktemp("fixture_images"))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check(process):
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def test_kill_9_then_same_command_continues_the_same_loss_curve(tmp_path, env):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    def start(model_dir, **extra_env):
        return subprocess.Popen(_command(model_dir), cwd=REPO, env=dict(env, **extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # The uninterrupted run and the one that is killed run side by side (start-up dominates).
    straight_process = start(straight)
    interrupted_process = start(interrupted, PALIMIX_TEST_SIGKILL_AFTER_STEP=str(KILL_AFTER_STEP))
    _, stderr = interrupted_process.communicate(timeout=600)
    assert interrupted_process.returncode == -signal.SIGKILL, stderr[-3000:]
    assert max(read_metrics(str(interrupted))) == KILL_AFTER_STEP
    assert sorted(os.listdir(interrupted / "checkpoints"), key=int) == ["3", "6"]
    _check(straight_process)
    expected = {s: r["loss"] for s, r in read_metrics(str(straight)).items()}
    assert sorted(expected) == list(range(1, STEPS + 1))

    stderr = _check(start(interrupted))  # The same command again.
    assert "resuming from the checkpoint at step 6 " in stderr
    resumed = {s: r["loss"] for s, r in read_metrics(str(interrupted)).items()}
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    # Only the last N checkpoints are kept, and no temporary directory is left over.
    assert sorted(os.listdir(interrupted / "checkpoints"), key=int) == ["9", "12"]
