"""Accelerator throughput: train-step MFU and greedy decode tokens/s of palimix's sizes.

    python benchmarks/accelerator.py                         # small, base, pali_3b
    python benchmarks/accelerator.py --models pali_3b --batch 32 --steps 10
    python benchmarks/accelerator.py --smoke                 # tiny, CPU-sized (CI runs it)

Per model (bf16 activations, float32 parameters, Adafactor as the embedded runner builds
it: `palimix.runner.trainer.Trainer` + `schedules.optimizer("adafactor")`):

  flops_per_step   XLA's cost analysis of the train step with attention traced through
                   XLA (a cuDNN flash-attention call is opaque to the cost analysis, so
                   the count would miss the attention products); the count includes
                   what remat recomputes
  flops_compiled   the cost analysis of the program that runs (with cuDNN attention
                   where it was chosen: lower by the attention FLOPs)
  step_s           median seconds per train step (after a warm-up step)
  mfu              flops_per_step / step_s / peak FLOP/s (--peak-flops, or the table
                   below by device kind; null when unknown, e.g. on CPU)
  decode_tokens_per_s  greedy decoding (the cache; image + prompt encoded outside the
                   timed call): batch * decode length / seconds

Needs only JAX, flax, optax and palimix's model and runner-core modules (no TensorFlow,
seqio or t5x; checked by tests/test_benchmarks_smoke.py). Prints a line per model and,
last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from palimix.models import decoding, layers, networks
from palimix.runner import schedules
from palimix.runner.model import ModelDefinition
from palimix.runner.trainer import Trainer

# Dense bf16 peak FLOP/s by `jax.devices()[0].device_kind` (vendor data sheets, no sparsity).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}

# Per model: batch size for the train step and for decoding (sized for one 141 GB H200
# without remat; --batch overrides the train batch).
BATCH = {"tiny": 2, "small": 128, "base": 64, "pali_3b": 32}
DECODE_BATCH = {"tiny": 2, "small": 64, "base": 64, "pali_3b": 32}
DEFAULT_MODELS = ("small", "base", "pali_3b")


def definition_of(name: str, overrides: dict) -> ModelDefinition:
    """The named model with bf16 activations and float32 parameters, then `overrides`."""
    return ModelDefinition.create(name, {"dtype": "bfloat16", "param_dtype": "float32", **overrides})


def random_batch(config, batch_size: int, lengths: dict, seed: int = 0) -> dict:
    """A train batch of `config`'s network with random tokens and images (shapes and
    dtypes from `networks.dummy_batch`), every target token weighted."""
    rng = np.random.default_rng(seed)
    batch = dict(networks.dummy_batch(config, batch_size, lengths))
    for name, value in batch.items():
        if name == "encoder_images":
            batch[name] = jnp.asarray(rng.uniform(-1, 1, value.shape), jnp.float32)
        elif name.endswith("_tokens"):
            batch[name] = jnp.asarray(rng.integers(2, config.vocab_size, value.shape), jnp.int32)
    batch["decoder_loss_weights"] = jnp.ones_like(batch["decoder_target_tokens"], jnp.float32)
    return batch


def _flops(cost) -> float:
    """`cost_analysis()` output (a dict, or a list of one per program in older JAX)."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def flops_with_xla_attention(step, *args) -> float:
    """XLA's FLOP count of `step(*args)` traced with attention through XLA (the kernel
    choice is made when tracing; a fresh lambda, so no cached trace of `step` is reused
    and the timed program's own trace keeps its choice)."""
    saved = os.environ.get(layers.ATTENTION_ENV)
    os.environ[layers.ATTENTION_ENV] = "xla"
    try:
        return _flops(jax.jit(lambda *a: step(*a)).lower(*args).cost_analysis())
    finally:
        if saved is None:
            del os.environ[layers.ATTENTION_ENV]
        else:
            os.environ[layers.ATTENTION_ENV] = saved


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def train_measurement(name, overrides, batch_size, lengths, steps) -> dict:
    """Compile the runner's train step, count its FLOPs, time `steps` steps."""
    definition = definition_of(name, overrides)
    trainer = Trainer(definition, lengths, batch_size=batch_size, tx=schedules.optimizer("adafactor", 1e-3))
    batch = trainer.shard_batch(random_batch(definition.config, batch_size, lengths))
    # The compiled step carries its shardings (data parallel over the devices).
    state = trainer.init_state()
    flops = flops_with_xla_attention(trainer._step, state, batch)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{name}: the train step's loss is {loss}")
    return {"batch": batch_size, "lengths": lengths, "flops_per_step": flops,
            "flops_compiled": _flops(compiled.cost_analysis()), "compile_s": round(compile_s, 1),
            "step_s": statistics.median(times), "loss": round(loss, 4)}


def decode_measurement(name, overrides, batch_size, prompt_length, decode_length, calls) -> dict:
    """Greedy decode tokens/s with the cache, prefill/encoding outside the timed calls."""
    config = definition_of(name, overrides).config
    model = networks.build(config)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    batch = random_batch(config, batch_size, {"inputs": prompt_length, "targets": 1})
    prompt = {k: batch[k] for k in model.PREDICT_INPUTS}
    if "decoder_causal_attention" in prompt:
        prompt["decoder_causal_attention"] = jnp.ones_like(prompt["decoder_causal_attention"])
    prepared = jax.jit(functools.partial(decoding.prepare, model, max_decode_length=decode_length))(params, prompt)
    decode = jax.jit(functools.partial(decoding.generate_from, model, eos_id=None))
    jax.block_until_ready(decode(params, prepared))  # compile
    seconds = statistics.median(timed(lambda: decode(params, prepared)[0]) for _ in range(calls))
    return {"decode_batch": batch_size, "decode_length": decode_length,
            "decode_tokens_per_s": round(batch_size * decode_length / seconds, 1)}


def peak_flops(arg: float | None) -> float | None:
    """Peak FLOP/s of all devices the step runs on (per device: --peak-flops or the table)."""
    per_device = arg if arg else PEAK_FLOPS.get(jax.devices()[0].device_kind)
    return per_device * jax.device_count() if per_device else None


def measure(name, args, peak) -> dict:
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    result = train_measurement(name, args.override, args.batch or BATCH[name], lengths, args.steps)
    result["tflops_per_s"] = round(result["flops_per_step"] / result["step_s"] / 1e12, 3)
    result["mfu"] = round(result["flops_per_step"] / result["step_s"] / peak, 4) if peak else None
    if args.decode_length:
        result.update(decode_measurement(name, args.override, DECODE_BATCH[name], args.inputs_length,
                                         args.decode_length, args.decode_calls))
    print(f"{name}: step {result['step_s'] * 1e3:.1f} ms at batch {result['batch']}, "
          f"{result['flops_per_step'] / 1e12:.2f} TFLOP/step, {result['tflops_per_s']} TFLOP/s, "
          f"MFU {result['mfu']}; decode {result.get('decode_tokens_per_s')} tokens/s", flush=True)
    return result


def parse_override(text: str):
    """key=value: value as JSON (numbers, true/false, lists), else as a string (remat=dots)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--override wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated: {', '.join(BATCH)}")
    parser.add_argument("--batch", type=int, default=None, help="train batch (default: per model, BATCH)")
    parser.add_argument("--inputs-length", type=int, default=32, help="prompt tokens")
    parser.add_argument("--targets-length", type=int, default=32, help="target tokens")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--decode-length", type=int, default=32, help="decoded tokens (0: no decode)")
    parser.add_argument("--decode-calls", type=int, default=3, help="timed decode calls")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s (default: by device kind)")
    parser.add_argument("--override", type=parse_override, action="append", default=[],
                        help="a configs.get override key=value, e.g. remat=dots (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="the tiny config, a few steps (CPU, CI)")
    args = parser.parse_args(argv)
    args.override = dict(args.override)
    if args.smoke:
        args.models, args.steps, args.decode_length, args.decode_calls = "tiny", 2, 4, 1
        args.inputs_length = args.targets_length = 8
    models = args.models.split(",")
    unknown = [m for m in models if m not in BATCH]
    if unknown:
        parser.error(f"--models: no batch size for {unknown}; known: {', '.join(BATCH)}")
    peak = peak_flops(args.peak_flops)
    results = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "peak_flops": peak,
               "attention": layers.attention_implementation(), "models": {}}
    for name in models:
        results["models"][name] = measure(name, args, peak)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
