"""Compile time of the PaLI train step with and without scanned layers, ahead of time.

The embedded runner's train step (`palimix.runner.trainer.Trainer`: loss, gradients of
the trainable parameters, the runner's Adafactor) for a size's gin file
(`sizes/<name>.gin`: bf16 activations, remat) is lowered from abstract arguments
(`jax.ShapeDtypeStruct`: nothing is allocated) and compiled for the CPU:

    python benchmarks/compile.py [--models pali_3b pali_17b] [--batch 8] [--timeout 1800]
    python benchmarks/compile.py --models tiny          # seconds: the smoke run CI does

Each (model, scan) is measured in a fresh process, one after another. Prints a table
and, last, one JSON line: per model and layout the seconds to trace + lower
(`lower_s`), to compile (`compile_s`) and the setup before (`setup_s`: gin, the
abstract parameters), plus the machine's load average around the run (this machine is
shared: compare the two layouts of one run, not runs). Goal: pali_17b compiles within
120 s with scan (`goal_17b_scanned_le_120s`). A measurement past --timeout is null.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LAYOUTS = {"unscanned": False, "scanned": True}


def trainer_for(name: str, *, scan: bool, batch: int, inputs: int, targets: int, mesh=None):
    """The runner's Trainer for `sizes/<name>.gin` (when the size has a gin file, else the
    named config as it is) with `scan_layers=scan`, and its task feature lengths."""
    import gin

    from palimix.commands.gin_path import gin_dir
    from palimix.runner import model as model_lib
    from palimix.runner import schedules
    from palimix.runner.trainer import Trainer

    size_file = os.path.join(gin_dir(), "sizes", f"{name}.gin")
    gin.clear_config()
    if os.path.exists(size_file):
        gin.parse_config_file(size_file)
    definition = model_lib.from_gin(name, {"scan_layers": scan})
    lengths = {"inputs": inputs, "targets": targets, "image": definition.config.vit.image_size}
    kwargs = {"mesh": mesh} if mesh else {}
    return Trainer(definition, lengths, batch_size=batch, tx=schedules.optimizer("adafactor", 1e-3), **kwargs)


def abstract_arguments(trainer, batch_size: int):
    """(state, batch) of `trainer.train_step` as `jax.ShapeDtypeStruct`s with the
    trainer's shardings."""
    import jax
    import jax.numpy as jnp

    from palimix.models import networks

    shardings = trainer.state_shardings()
    params = trainer.abstract_params()
    opt_state = jax.eval_shape(trainer.tx.init, trainer.split(params)[0])
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": opt_state}
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings)
    batch = jax.eval_shape(lambda: networks.dummy_batch(trainer.definition.config, batch_size,
                                                        trainer.task_feature_lengths))
    batch["decoder_loss_weights"] = jax.ShapeDtypeStruct(batch["decoder_target_tokens"].shape, jnp.float32)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding) for k, v in batch.items()}
    return state, batch


def compile_train_step(name: str, *, scan: bool, batch: int, inputs: int, targets: int, mesh=None):
    """-> (the compiled train step, {"setup_s", "lower_s", "compile_s"})."""
    start = time.perf_counter()
    trainer = trainer_for(name, scan=scan, batch=batch, inputs=inputs, targets=targets, mesh=mesh)
    state, batch_shapes = abstract_arguments(trainer, batch)
    times = {"setup_s": time.perf_counter() - start}
    with trainer.context():
        start = time.perf_counter()
        lowered = trainer.train_step.lower(state, batch_shapes)
        times["lower_s"] = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        times["compile_s"] = time.perf_counter() - start
    return compiled, {k: round(v, 2) for k, v in times.items()}


def _measure_one(args) -> None:
    """Child process: one (model, layout); prints its JSON line."""
    _, times = compile_train_step(args.one, scan=LAYOUTS[args.layout], batch=args.batch, inputs=args.inputs,
                                  targets=args.targets)
    print(json.dumps(times))


def _run_child(model: str, layout: str, args) -> dict | None:
    command = [sys.executable, os.path.abspath(__file__), "--one", model, "--layout", layout,
               "--batch", str(args.batch), "--inputs", str(args.inputs), "--targets", str(args.targets)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode:
        raise RuntimeError(f"{model} {layout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["pali_3b", "pali_17b"])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=32, help="prompt tokens (after the image tokens)")
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _measure_one(args)

    load_before = os.getloadavg()
    results = {}
    print(f"{'model':<10} {'layout':<10} {'setup_s':>8} {'lower_s':>8} {'compile_s':>10}", flush=True)
    for model in args.models:
        for layout in args.layouts:
            times = results.setdefault(model, {})[layout] = _run_child(model, layout, args)
            row = ("not measured (timeout)" if times is None else
                   f"{times['setup_s']:>8.1f} {times['lower_s']:>8.1f} {times['compile_s']:>10.1f}")
            print(f"{model:<10} {layout:<10} {row}", flush=True)
    summary = {"benchmark": "compile", "batch": args.batch, "inputs": args.inputs, "targets": args.targets,
               "results": results, "cpu_count": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    scanned_17b = results.get("pali_17b", {}).get("scanned")
    if scanned_17b is not None:
        summary["goal_17b_scanned_le_120s"] = scanned_17b["lower_s"] + scanned_17b["compile_s"] <= 120
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
