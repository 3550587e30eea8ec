"""int8 vs float frozen language model in mBLIP's instruction stage: the training loss
after a short run on the demo mixture, on tiny sizes.

Two runs of the embedded runner (`palimix.runner.train`) with runs/mblip_instruct.gin
and sizes/tiny.gin (a small Q-Former), the same seed, batches and steps; one stores the
frozen LM in int8 (the stage's default), the other in float32. Both start from the same
float draw (the int8 weights are that draw quantized, palimix.models.quantize). The
loss compared is the mean of the last --last logged steps' losses (logged every step).

    python benchmarks/mblip_int8_loss.py [--steps 200] [--batch 8] [--mixture palimix_demo]

Last line: a JSON object with both losses and their relative difference (the goal:
within 2%).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

# A small Q-Former for the tiny LM (the default is BLIP-2's 12 layers of 768).
SMALL_QFORMER = dict(qformer_num_queries=8, qformer_depth=2, qformer_width=64, qformer_num_heads=4,
                     qformer_mlp_dim=128)


def train_loss(int8: bool, args, model_dir: str) -> float:
    import gin

    from palimix.runner import config as config_lib
    from palimix.runner import train
    from palimix.runner.summaries import read_metrics

    gin.clear_config()
    bindings = [f"configs.get.{k} = {v}" for k, v in SMALL_QFORMER.items()]
    bindings.append(f"configs.get.lm_int8_kernels = {int8}")
    config_lib.parse_gin(["models/network.gin", "runs/mblip_instruct.gin", "sizes/tiny.gin"], bindings)
    config = train.TrainConfig(
        mixture_or_task_name=args.mixture, model_dir=model_dir, batch_size=args.batch, train_steps=args.steps,
        learning_rate=args.learning_rate, warmup_steps=args.steps // 10, log_every=1,
        checkpoint_every=args.steps, progress=False, seed=0)
    train.train(config)
    metrics = read_metrics(model_dir)
    steps = sorted(metrics)[-args.last:]
    return float(np.mean([metrics[s]["loss"] for s in steps]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", default="palimix_demo")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--last", type=int, default=20, help="average the loss of this many last steps")
    args = parser.parse_args(argv)
    import palimix.tasks  # noqa: F401  (registers palimix_demo)

    with tempfile.TemporaryDirectory() as root:
        losses = {name: train_loss(int8, args, os.path.join(root, name))
                  for name, int8 in (("float", False), ("int8", True))}
    relative = abs(losses["int8"] - losses["float"]) / losses["float"]
    result = {"mixture": args.mixture, "steps": args.steps, "batch": args.batch, "last_steps_averaged": args.last,
              "float_loss": round(losses["float"], 4), "int8_loss": round(losses["int8"], 4),
              "relative_difference": round(relative, 6), "within_2_percent": relative <= 0.02}
    print(f"loss after {args.steps} steps (mean of the last {args.last}): float {losses['float']:.4f}, "
          f"int8 {losses['int8']:.4f} ({100 * relative:.2f}% apart)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
