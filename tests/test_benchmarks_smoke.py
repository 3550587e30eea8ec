"""Benchmarks that CI runs in their smoke modes: benchmarks/accelerator.py (which needs no
TensorFlow, seqio or t5x: the accelerator machines have JAX, flax and optax only) and
benchmarks/image_generation.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the script as `python benchmarks/accelerator.py --smoke` would, then reports
# which of the heavy libraries the run imported.
PROGRAM = """
import json, runpy, sys
sys.argv = ["benchmarks/accelerator.py", "--smoke"]
runpy.run_path("benchmarks/accelerator.py", run_name="__main__")
print(json.dumps({name: name in sys.modules for name in ("tensorflow", "seqio", "t5x", "gin")}))
"""


@pytest.mark.slow
def test_accelerator_smoke_runs_without_tensorflow():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    imported = json.loads(lines[-1])
    assert imported == {"tensorflow": False, "seqio": False, "t5x": False, "gin": False}
    results = json.loads(lines[-2])
    tiny = results["models"]["tiny"]
    assert results["attention"] == "auto" and results["devices"] >= 1
    assert tiny["flops_per_step"] > 0 and tiny["flops_compiled"] > 0
    # On CPU the attention is XLA's either way: both counts are of the same program.
    assert abs(tiny["flops_compiled"] / tiny["flops_per_step"] - 1) < 0.05
    assert tiny["step_s"] > 0 and tiny["decode_tokens_per_s"] > 0 and tiny["loss"] > 0
    assert tiny["mfu"] is None  # no peak FLOP/s known for a CPU


@pytest.mark.slow
def test_image_generation_smoke_measures_the_cached_loop():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "benchmarks/image_generation.py", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    tiny = summary["models"]["tiny"]
    assert summary["grid"] == 4 and tiny["image_tokens"] == 4 * 4 + 2
    assert tiny["codes_per_s"] > 0 and tiny["ms_per_token_caption"] > 0
    assert tiny["image_vs_caption"] > 0 and tiny["guidance_cost"] > 0 and tiny["cache_speedup"] > 0
