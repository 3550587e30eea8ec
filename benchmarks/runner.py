"""Steps/s of palimix's embedded runner vs `t5x.train`: same tiny model, mixture, batch.

Both run as subprocesses on palimix_demo (tiny size, batch 32, demo lengths) for
--steps steps; the steady-state rate excludes the first logging interval (compilation).
The runner's rate comes from its own report, t5x's from its `timing/steps_per_second`
TensorBoard summaries. The runner runs twice: with its default input (`auto`: the demo
fits in memory, so batches are sampled from memory) and streaming seqio's tf.data
pipeline as t5x does (`--input_mode stream`). Also reports the runner's input wait as a
share of step time. Final line: {"runner_steps_per_s", "t5x_steps_per_s", "ratio",
"runner_input_wait_share", "runner_stream_steps_per_s", "stream_ratio", ...}.
Skips t5x (null) when T5X is not installed.

    python benchmarks/runner.py [--steps 200] [--batch_size 32]
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runner_rate(model_dir, steps, batch_size, log_every, input_mode="auto"):
    command = [sys.executable, "-m", "palimix.cli", "train", "palimix_demo", "--model_dir", model_dir,
               "--steps", str(steps), "--batch_size", str(batch_size), "--log_every", str(log_every),
               "--checkpoint_every", str(steps), "--no_progress", "--input_mode", input_mode]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"palimix train failed:\n{result.stderr[-3000:]}")
    match = re.search(r"\(([\d.]+) steps/s, input wait ([\d.]+)% of step time\)", result.stdout)
    return float(match.group(1)), float(match.group(2)) / 100


def t5x_rate(model_dir, steps, batch_size, log_every):
    from palimix.runner.config import palimix_gin_dir
    from palimix.tasks import demo

    lengths = "{" + ", ".join(f"'{k}': {v}" for k, v in demo.TASK_FEATURE_LENGTHS.items()) + "}"
    command = [sys.executable, "-m", "t5x.train", f"--gin_search_paths={palimix_gin_dir()}",
               "--gin_file=models/pali.gin", "--gin_file=runs/pretrain.gin", "--gin_file=sizes/tiny.gin",
               f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch_size}",
               "--gin.MIXTURE_OR_TASK_NAME='palimix_demo'", f"--gin.TASK_FEATURE_LENGTHS={lengths}",
               # t5x writes timing/steps_per_second once per eval period: one per interval.
               f"--gin.EVAL_PERIOD={log_every}", "--gin.EVAL_STEPS=1", f"--gin.CHECKPOINT_PERIOD={steps}"]
    result = subprocess.run(command, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"t5x.train failed:\n{result.stderr[-3000:]}")
    import tensorflow as tf

    rates = []
    train_dir = os.path.join(model_dir, "train")
    for name in sorted(os.listdir(train_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(train_dir, name)):
            for value in event.summary.value:
                if value.tag == "timing/steps_per_second":
                    rates.append((event.step, float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                                  else value.simple_value))
    rates.sort()
    steady = [r for step, r in rates[1:]] or [r for _, r in rates]
    return sum(steady) / len(steady)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--log_every", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runner, wait = runner_rate(os.path.join(tmp, "runner"), args.steps, args.batch_size, args.log_every)
        stream, stream_wait = runner_rate(os.path.join(tmp, "stream"), args.steps, args.batch_size,
                                          args.log_every, "stream")
        t5x = None
        if importlib.util.find_spec("t5x") is not None:
            t5x = t5x_rate(os.path.join(tmp, "t5x"), args.steps, args.batch_size, args.log_every)
        else:
            print("t5x is not installed: skipping its half", file=sys.stderr)
    print(json.dumps({"runner_steps_per_s": round(runner, 3),
                      "t5x_steps_per_s": None if t5x is None else round(t5x, 3),
                      "ratio": None if t5x is None else round(runner / t5x, 3),
                      "runner_input_wait_share": round(wait, 3),
                      "runner_stream_steps_per_s": round(stream, 3),
                      "stream_ratio": None if t5x is None else round(stream / t5x, 3),
                      "runner_stream_input_wait_share": round(stream_wait, 3), "steps": args.steps,
                      "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
