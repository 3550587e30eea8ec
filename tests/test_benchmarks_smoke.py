"""benchmarks/accelerator.py runs end to end in its CPU smoke mode, and needs no
TensorFlow, seqio or t5x (the accelerator machines have JAX, flax and optax only)."""

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
