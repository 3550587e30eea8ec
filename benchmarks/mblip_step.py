"""mBLIP's instruction-stage train step (runs/mblip_instruct.gin: Q-Former + projection +
LoRA train, the LM frozen, optionally in int8) vs full fine-tuning of the same network,
on a base-size model: step time and peak memory, as ratios measured in one run.

Each variant is the embedded runner's compiled train step (`palimix.runner.trainer.Trainer`,
Adafactor; `benchmarks/backbone_step.py`'s Stepper) on the same batch:

- full:       the Q-Former network, every parameter trains;
- lora:       models/mblip_lora.gin (LoRA on all seven LM projections, rank 8), only
              the adapters, query tokens, Q-Former and language_projection train;
- lora_int8:  lora with the frozen LM stored in int8 (runs/mblip_instruct.gin).

Peak memory is XLA's memory analysis of the compiled step (arguments + temporaries +
outputs - aliased, as benchmarks/memory.py). Step times are medians over interleaved
repetitions (after one compiling step each), so machine load affects every variant alike.

    python benchmarks/mblip_step.py [--model base] [--image_size 112] [--batch 4] [--reps 5]
    python benchmarks/mblip_step.py --quick        # 2 repetitions (a smoke run)

Last line: a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backbone_step  # noqa: E402  (its Stepper, batch helpers and interleaved timing)
import compile as compile_benchmark  # noqa: E402  (abstract train-step arguments)

from palimix.models import configs, lora, networks  # noqa: E402
from palimix.models.trainable import ParamSelection  # noqa: E402
from palimix.runner.model import ModelDefinition  # noqa: E402

# models/mblip_lora.gin's bindings (the dropout aside: the steps compare compute, not noise).
MBLIP_LORA = dict(lm_lora_targets=list(configs.LORA_TARGETS), lm_lora_rank=8, lm_lora_alpha=16.0)
# Variant -> (configs.get overrides on top of the Q-Former bridge, the trainable patterns).
VARIANTS = {
    "full": ({}, (".*",)),
    "lora": (MBLIP_LORA, lora.MBLIP_TRAINABLE),
    "lora_int8": ({**MBLIP_LORA, "lm_int8_kernels": True}, lora.MBLIP_TRAINABLE),
}


def definitions(model: str, image_size: int, qformer_depth: int) -> dict:
    base = dict(bridge="qformer", image_size=image_size, qformer_depth=qformer_depth)
    return {name: ModelDefinition.create(model, {**base, **overrides}, ParamSelection(trainable=patterns))
            for name, (overrides, patterns) in VARIANTS.items()}


def peak_bytes(trainer, batch_size: int) -> dict:
    """XLA's memory analysis of the compiled train step."""
    state, batch = compile_benchmark.abstract_arguments(trainer, batch_size)
    with trainer.context():
        stats = trainer.train_step.lower(state, batch).compile().memory_analysis()
    parts = {"argument": stats.argument_size_in_bytes, "temp": stats.temp_size_in_bytes,
             "output": stats.output_size_in_bytes, "alias": stats.alias_size_in_bytes}
    return {"peak": parts["argument"] + parts["temp"] + parts["output"] - parts["alias"], **parts}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="base", help="a palimix.models.configs name (base: ViT-B/16 + mT5-base)")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--qformer_depth", type=int, default=12, help="Q-Former layers (BLIP-2/mBLIP: 12)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--inputs", type=int, default=32, help="prompt tokens")
    parser.add_argument("--targets", type=int, default=16, help="answer tokens")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repetitions (a smoke run)")
    args = parser.parse_args(argv)
    lengths = {"inputs": args.inputs, "targets": args.targets, "image": args.image_size}
    defs = definitions(args.model, args.image_size, args.qformer_depth)
    examples = backbone_step.task_examples(args.batch, lengths, defs["full"].config.vocab_size)
    steppers = {name: backbone_step.Stepper(d, lengths, backbone_step.model_batch(d, examples, lengths))
                for name, d in defs.items()}
    results = {"device": jax.devices()[0].device_kind, "model": args.model, "batch": args.batch,
               "lengths": lengths, "params": networks.count_params(defs["lora"].config)["total"]}
    for name, stepper in steppers.items():
        memory = peak_bytes(stepper.trainer, args.batch)
        results[f"{name}_peak_bytes"] = int(memory["peak"])
        results[f"{name}_argument_bytes"] = int(memory["argument"])
        results[f"{name}_temp_bytes"] = int(memory["temp"])
    seconds = backbone_step.alternate(steppers, 2 if args.quick else args.reps)
    for name in VARIANTS:
        results[f"{name}_step_s"] = round(seconds[name], 4)
        print(f"{name:<10} {seconds[name] * 1e3:9.1f} ms/step  peak {results[f'{name}_peak_bytes'] / 2**30:6.2f} GiB"
              f"  (arguments {results[f'{name}_argument_bytes'] / 2**30:.2f}, temporaries "
              f"{results[f'{name}_temp_bytes'] / 2**30:.2f})")
    for name in ("lora", "lora_int8"):
        results[f"{name}_vs_full_step_time_ratio"] = round(seconds[name] / seconds["full"], 3)
        results[f"{name}_vs_full_peak_memory_ratio"] = round(results[f"{name}_peak_bytes"] /
                                                             results["full_peak_bytes"], 3)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
