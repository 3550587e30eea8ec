"""Memory plan: per-device bytes of the PaLI train steps on meshes of 8 to 64 devices.

The embedded runner's train step (`benchmarks/compile.py`: the size's gin file, bf16
activations, remat, Adafactor) is compiled ahead of time for a ("data", "model") mesh
of forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, one
process per mesh), with `partitioning.DEFAULT_RULES`; XLA's memory analysis of the
compiled program gives the bytes one device needs:

    per-device bytes = arguments + temporaries + outputs - aliased (the donated state)

    python benchmarks/memory.py [--models pali_3b pali_17b] [--devices 8 16 32 64]
                                [--model-parallel 8] [--batch 64] [--layout scanned]
    python benchmarks/memory.py --models tiny --devices 2 --model-parallel 2   # smoke

The global batch is fixed (--batch, split over "data" = devices / model-parallel), so a
larger mesh only lowers the bytes per device: meshes are measured from the smallest up
and a model stops once it fits the largest device size. Prints a table and, last, one
JSON line with the bytes per mesh and, per model and device size (80 GB, 141 GB), the
smallest mesh it fits (null: none measured fits; a mesh past --timeout is null too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile as compile_benchmark  # noqa: E402  (benchmarks/compile.py: the same compiled step)

DEVICE_GB = (80, 141)
GB = 1e9


def _measure_one(args) -> None:
    """Child process (XLA_FLAGS set by the parent): one mesh; prints its JSON line."""
    import jax

    (devices,) = args.devices
    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} host devices, have {jax.device_count()}: XLA_FLAGS not applied?")
    mesh = {"data": devices // args.model_parallel, "model": args.model_parallel}
    compiled, times = compile_benchmark.compile_train_step(
        args.one, scan=args.layout == "scanned", batch=args.batch, inputs=args.inputs, targets=args.targets,
        mesh=mesh)
    stats = compiled.memory_analysis()
    parts = {"argument": stats.argument_size_in_bytes, "temp": stats.temp_size_in_bytes,
             "output": stats.output_size_in_bytes, "alias": stats.alias_size_in_bytes}
    total = parts["argument"] + parts["temp"] + parts["output"] - parts["alias"]
    print(json.dumps({"bytes": int(total), **{f"{k}_bytes": int(v) for k, v in parts.items()}, "mesh": mesh,
                      **times}))


def _run_child(model: str, devices: int, args) -> dict | None:
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                     f"--xla_force_host_platform_device_count={devices}".strip(),
               JAX_PLATFORMS="cpu")
    command = [sys.executable, os.path.abspath(__file__), "--one", model, "--devices", str(devices),
               "--model-parallel", str(args.model_parallel), "--batch", str(args.batch), "--inputs",
               str(args.inputs), "--targets", str(args.targets), "--layout", args.layout]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode:
        raise RuntimeError(f"{model} on {devices} devices failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def smallest_fitting(per_mesh: dict, device_gb: float):
    """The fewest devices whose per-device bytes fit `device_gb`, or None."""
    fitting = [int(n) for n, m in per_mesh.items() if m is not None and m["bytes"] <= device_gb * GB]
    return min(fitting) if fitting else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["pali_3b", "pali_17b"])
    parser.add_argument("--devices", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--model-parallel", type=int, default=8, help="size of the mesh's 'model' axis")
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over 'data')")
    parser.add_argument("--inputs", type=int, default=32, help="prompt tokens (after the image tokens)")
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--layout", default="scanned", choices=list(compile_benchmark.LAYOUTS))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per mesh")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _measure_one(args)

    load_before = os.getloadavg()
    results = {}
    print(f"{'model':<10} {'devices':>7} {'mesh':>12} {'GB/device':>10} {'args':>8} {'temp':>8} {'out':>8} "
          f"{'alias':>8}", flush=True)
    for model in args.models:
        per_mesh = results.setdefault(model, {})
        for devices in sorted(args.devices):
            measured = per_mesh[str(devices)] = _run_child(model, devices, args)
            mesh = f"{devices // args.model_parallel}x{args.model_parallel}"
            if measured is None:
                print(f"{model:<10} {devices:>7} {mesh:>12} {'not measured (timeout)':>10}", flush=True)
                continue
            gb = {k: measured[f"{k}_bytes"] / GB for k in ("argument", "temp", "output", "alias")}
            print(f"{model:<10} {devices:>7} {mesh:>12} {measured['bytes'] / GB:>10.1f} {gb['argument']:>8.1f} "
                  f"{gb['temp']:>8.1f} {gb['output']:>8.1f} {gb['alias']:>8.1f}", flush=True)
            if measured["bytes"] <= min(DEVICE_GB) * GB:  # fits every device size; larger meshes need less
                break
    summary = {
        "benchmark": "memory", "layout": args.layout, "model_parallel": args.model_parallel,
        "global_batch": args.batch, "inputs": args.inputs, "targets": args.targets, "results": results,
        "smallest_mesh": {model: {f"{gb}GB": smallest_fitting(per_mesh, gb) for gb in DEVICE_GB}
                          for model, per_mesh in results.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
