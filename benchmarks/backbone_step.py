"""Decoder-only vs encoder-decoder: the embedded runner's train step at about equal
parameters, on the same batch (same images, prompts and answers).

    python benchmarks/backbone_step.py [--width 256] [--layers 2] [--batch 8] [--quick]

The encoder-decoder is `tiny`'s composition (tiny ViT -> projection -> T5 1.1 encoder
and decoder of --layers layers each) at --width; the decoder-only network is
`tiny_decoder`'s (the same ViT -> projection -> Gemma) at the same width, head size and
MLP ratio, with the Gemma depth whose total parameter count is nearest (the
encoder-decoder's untied output layer and cross-attention are paid for with decoder
layers). Both read the same task examples through their own feature converter
(`networks.feature_converter`): --image_size images (the same image tokens), --inputs
prompt and --targets answer tokens.

The step is the runner's (`palimix.runner.trainer.Trainer`: Adafactor, `losses.cross_entropy`
with z-loss, all parameters trained). Steps alternate between the two models (after a
compiling step each) and the median step time of each is kept, so machine load affects
both alike. Last line, JSON: parameters of each, steps/s of each, and
`step_time_ratio` = decoder-only step time / encoder-decoder step time.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from palimix.models import networks
from palimix.runner import schedules
from palimix.runner.model import ModelDefinition
from palimix.runner.trainer import Trainer

HEAD_DIM = 64
MLP_RATIO = 4


def encoder_decoder(width: int, layers: int, image_size: int) -> ModelDefinition:
    return ModelDefinition.create("tiny", dict(
        image_size=image_size, text_emb_dim=width, text_num_heads=width // HEAD_DIM, text_head_dim=HEAD_DIM,
        text_mlp_dim=MLP_RATIO * width, text_num_encoder_layers=layers, text_num_decoder_layers=layers))


def decoder_only(width: int, depth: int, image_size: int) -> ModelDefinition:
    # tiny_decoder's grouped-query attention: one key/value head per two query heads.
    heads = width // HEAD_DIM
    return ModelDefinition.create("tiny_decoder", dict(
        image_size=image_size, llm_width=width, llm_num_heads=heads, llm_num_kv_heads=max(1, heads // 2), llm_head_dim=HEAD_DIM,
        llm_mlp_dim=MLP_RATIO * width, llm_depth=depth))


def matched_decoder_only(width: int, target_params: int, image_size: int) -> ModelDefinition:
    """The decoder-only definition whose parameter count is nearest `target_params`."""
    def params(depth):
        return networks.count_params(decoder_only(width, depth, image_size).config)["total"]

    depth = 1
    while params(depth + 1) <= target_params:
        depth += 1
    best = min((depth, depth + 1), key=lambda d: abs(params(d) - target_params))
    return decoder_only(width, best, image_size)


def task_examples(batch: int, lengths: dict, vocab_size: int, seed: int = 0) -> dict:
    """Task features (docs/ARCHITECTURE.md, "Example features") without padding: every
    prompt and answer is exactly as long as its length (the answer's last token stands
    where EOS would)."""
    rng = np.random.default_rng(seed)
    s = lengths["image"]
    return {
        "image": rng.uniform(-1, 1, (batch, s, s, 3)).astype(np.float32),
        "has_image": np.ones((batch, 1), np.int32),
        "inputs": rng.integers(2, vocab_size, (batch, lengths["inputs"])).astype(np.int32),
        "targets": rng.integers(2, vocab_size, (batch, lengths["targets"])).astype(np.int32),
    }


def model_batch(definition: ModelDefinition, examples: dict, lengths: dict) -> dict:
    """`examples` through the definition's feature converter, as one batch of numpy arrays."""
    import tensorflow as tf

    converter = networks.feature_converter(definition.config)
    dataset = converter(tf.data.Dataset.from_tensor_slices(examples), lengths)
    return next(dataset.batch(len(examples["image"])).as_numpy_iterator())


class Stepper:
    """One model's compiled runner step and its state, stepped one call at a time."""

    def __init__(self, definition: ModelDefinition, lengths: dict, batch: dict):
        tx = schedules.optimizer("adafactor", 1e-3)
        self.trainer = Trainer(definition, lengths, batch_size=len(batch["encoder_images"]), tx=tx)
        self.state = self.trainer.init_state()
        self.batch = self.trainer.shard_batch(batch)

    def __call__(self):
        with self.trainer.context():
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        return metrics["loss"]


def alternate(steppers: dict, reps: int) -> dict:
    """Median seconds per step of each stepper, steps interleaved (after one compiling step)."""
    for step in steppers.values():
        jax.block_until_ready(step())
    times = {name: [] for name in steppers}
    for _ in range(reps):
        for name, step in steppers.items():
            start = time.perf_counter()
            jax.block_until_ready(step())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=256, help="language model width (a multiple of 128)")
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers of the encoder-decoder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64, help="64: 16 image tokens (16-pixel patches)")
    parser.add_argument("--inputs", type=int, default=32, help="prompt tokens")
    parser.add_argument("--targets", type=int, default=32, help="answer tokens")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 repetitions (a smoke run)")
    args = parser.parse_args(argv)
    lengths = {"inputs": args.inputs, "targets": args.targets, "image": args.image_size}
    encdec = encoder_decoder(args.width, args.layers, args.image_size)
    decoder = matched_decoder_only(args.width, networks.count_params(encdec.config)["total"], args.image_size)
    examples = task_examples(args.batch, lengths, min(encdec.config.vocab_size, decoder.config.vocab_size))
    definitions = {"encoder_decoder": encdec, "decoder_only": decoder}
    steppers = {name: Stepper(d, lengths, model_batch(d, examples, lengths)) for name, d in definitions.items()}
    seconds = alternate(steppers, 3 if args.quick else args.reps)
    results = {"device": jax.devices()[0].device_kind, "batch": args.batch, "lengths": lengths,
               "image_tokens": encdec.config.num_image_tokens, "decoder_only_depth": decoder.config.llm.depth}
    for name, definition in definitions.items():
        results[f"{name}_params"] = networks.count_params(definition.config)["total"]
        results[f"{name}_steps_per_s"] = round(1 / seconds[name], 3)
        print(f"{name:<16} {results[f'{name}_params'] / 1e6:6.2f}M parameters  {seconds[name] * 1e3:8.1f} ms/step")
    results["params_ratio"] = round(results["decoder_only_params"] / results["encoder_decoder_params"], 4)
    results["step_time_ratio"] = round(seconds["decoder_only"] / seconds["encoder_decoder"], 3)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
