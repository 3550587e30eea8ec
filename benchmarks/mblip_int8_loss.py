"""int8 vs float frozen language model in mBLIP's instruction stage, after the demo's
training: `palimix demo --recipe mblip` (its LM pretrained on the demo's text kinds,
then warm-up, then instruct with the LM frozen in int8), and the instruct stage once more
from the same warm-up run with `configs.get.lm_int8_kernels = False` (same seed, batches
and steps). Compared: the final training loss (mean of the last --last logged
intervals) and each image kind's score on the validation split, with the baselines.

    python benchmarks/mblip_int8_loss.py --out /tmp/mblip_int8 [--steps N] [--eval_examples N]

An existing finished demo run in --out is reused (the demo resumes). Last line: a JSON
object with both losses, their relative difference (the issue's goal: within 2%), the
per-kind table, wall times, steps/s and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np


def final_loss(model_dir: str, last: int) -> float:
    from palimix.runner.summaries import read_metrics

    metrics = read_metrics(model_dir)
    steps = sorted(s for s in metrics if "loss" in metrics[s])[-last:]
    return float(np.mean([metrics[s]["loss"] for s in steps]))


def float_instruct(recipe, demo_dir: str, out_dir: str, args):
    """The recipe's last stage with a float frozen LM, from the demo's warm-up run."""
    from palimix.runner import demo

    instruct = recipe.final
    stage = dataclasses.replace(instruct, gin_bindings=instruct.gin_bindings + ("configs.get.lm_int8_kernels = False",))
    previous = demo.stage_dir(demo_dir, recipe, recipe.stages[-2])
    done = demo.train_stages(demo.Recipe((stage,), "instruct, float LM"), out_dir, seed=0, progress=False,
                             start_from=previous)
    scores = demo.evaluate_run(out_dir, stage.kinds, eval_examples=args.eval_examples, name="mblip (float LM)")
    return done[0], scores


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for both runs (demo/ and float_instruct/)")
    parser.add_argument("--steps", type=int, help="every stage's steps (default: the recipe's)")
    parser.add_argument("--eval_examples", type=int, help="validation examples per task (default: all)")
    parser.add_argument("--last", type=int, default=4, help="average the loss of this many last logged intervals")
    args = parser.parse_args(argv)
    import palimix.tasks  # noqa: F401  (registers palimix_demo)
    from palimix.runner import demo
    from palimix.runner.config import enable_compilation_cache

    enable_compilation_cache()
    load_before = os.getloadavg()
    settings = demo.DemoSettings(model_dir=os.path.join(args.out, "demo"), recipe_name="mblip", steps=args.steps,
                                 eval_examples_per_task=args.eval_examples, progress=False)
    int8 = demo.run_demo(settings)
    float_stage, float_scores = float_instruct(settings.recipe(), settings.run_dir(),
                                               os.path.join(args.out, "float_instruct"), args)
    losses = {"int8": final_loss(settings.run_dir(), args.last),
              "float": final_loss(os.path.join(args.out, "float_instruct"), args.last)}
    kinds = {kind: {"metric": row["metric"], "baseline": row["baseline"], "int8": row["model"],
                    "float": float_scores["kinds"][kind]["model"]} for kind, row in int8["kinds"].items()}
    for kind, row in kinds.items():
        print(f"{kind:16s} {row['metric']:14s} baseline {row['baseline']:7.2f}  int8 {row['int8']:7.2f}  "
              f"float {row['float']:7.2f}")
    details = int8["_details"]
    result = {
        "loss_int8": round(losses["int8"], 4), "loss_float": round(losses["float"], 4),
        "relative_difference": round(abs(losses["int8"] - losses["float"]) / losses["float"], 4),
        "kinds": kinds, "demo_seconds": int8["seconds"], "stages": details["stages"],
        "float_instruct_steps_per_s": float_stage["steps_per_s"],
        "trainable_share": details["trainable_share"], "params": details["params"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
