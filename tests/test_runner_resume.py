"""`kill -9` at any point + the same command again == the uninterrupted run.

Runs `palimix train` in subprocesses on a small real task (tests/runner_fixture_tasks.py):
once straight through, once killed with SIGKILL after a checkpoint (mid-interval) and
started again with the same command. The per-step losses of both must be equal.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from palimix.runner.summaries import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


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


def _kill_after_step(process, model_dir, step):
    """SIGKILLs a training process once `step` is logged."""
    deadline = time.time() + 600
    while time.time() < deadline:
        if max(read_metrics(str(model_dir)), default=0) >= step:
            break
        if process.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    return process.returncode


def test_kill_9_then_same_command_continues_the_same_loss_curve(tmp_path, env):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    start = lambda model_dir: subprocess.Popen(  # noqa: E731
        _command(model_dir), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The uninterrupted run and the one to kill run side by side (start-up dominates).
    straight_process, interrupted_process = start(straight), start(interrupted)
    assert _kill_after_step(interrupted_process, interrupted, 7) == -signal.SIGKILL
    logged_before = max(read_metrics(str(interrupted)))
    assert 7 <= logged_before < STEPS
    _check(straight_process)
    expected = {s: r["loss"] for s, r in read_metrics(str(straight)).items()}
    assert sorted(expected) == list(range(1, STEPS + 1))

    stderr = _check(start(interrupted))  # The same command again.
    assert "resuming from the checkpoint at step" in stderr
    resumed = {s: r["loss"] for s, r in read_metrics(str(interrupted)).items()}
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    # Only the last N checkpoints are kept, and no temporary directory is left over.
    assert sorted(os.listdir(interrupted / "checkpoints"), key=int) == ["9", "12"]
