"""Seconds to build one task's tf.data pipeline (`task.get_dataset`), for demo tasks.

Building a pipeline traces every map/filter function of the task into a TF graph;
a mixture of 114 tasks pays it per task and per split (the demo builds train and
validation), so it is a visible share of a short run. This measures it for the
7 `palimix_demo` tasks (one multilingual task per kind) and 5 per-language tasks on
the demo's data, after one warm-up task (first-use costs: the vocabulary, TF's
kernels), the way the demo and the runner call it.

    python benchmarks/task_build.py [--repeat 1] [--profile 25]

`--profile N` prints the N costliest functions (cProfile, cumulative time).
Last line: a JSON object with per_task_s and per_task_cpu_s (means: wall clock and
process CPU time) and the per-task wall-clock times.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

# Per-language tasks (what add_task registers by default), from the demo's caption and
# VQA data, next to the demo's own seven multilingual tasks.
PER_LANGUAGE = {"caption": ["de", "fr", "ja"], "vqa": ["es", "ru"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="build each task this many times (the best counts)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    args = parser.parse_args()

    import seqio

    from palimix.tasks import add_task, demo, groups

    tasks = [name for mixture in demo.KIND_MIXTURES.values() for name in groups()[mixture]]
    for kind, codes in PER_LANGUAGE.items():
        fields = {"captions": "captions"} if kind == "caption" else {"question": "question", "answers": "answers"}
        group = f"benchmark_{kind}"
        add_task(group, kind=kind, source=demo._source(kind, fields), languages=codes + ["it"],
                 image_size=demo.IMAGE_SIZE, overwrite=True)
        tasks += [name for name in groups()[group] if not name.endswith("_it")]
    warm_up = "benchmark_caption_it"

    def build(name):
        task = seqio.get_mixture_or_task(name)
        return task.get_dataset(demo.TASK_FEATURE_LENGTHS, split="train", shuffle=True, seed=0, use_cached=False)

    next(iter(build(warm_up)))  # First-use costs, then only building is timed.
    profiler = cProfile.Profile() if args.profile else None
    seconds, cpu_seconds = {}, {}
    for name in tasks:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            if profiler:
                profiler.enable()
            start, cpu_start = time.perf_counter(), time.process_time()
            build(name)
            best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - cpu_start)
            if profiler:
                profiler.disable()
        seconds[name], cpu_seconds[name] = best, best_cpu
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    print(f"{len(tasks)} tasks, best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    for name, s in seconds.items():
        print(f"  {name:<36} {s:6.3f} s  {cpu_seconds[name]:6.3f} CPU s")
    print(json.dumps({
        "per_task_s": round(sum(seconds.values()) / len(seconds), 4),
        # Tracing is single-threaded Python: CPU time is steadier than wall clock on a shared machine.
        "per_task_cpu_s": round(sum(cpu_seconds.values()) / len(cpu_seconds), 4),
        "tasks": {name: round(s, 4) for name, s in seconds.items()},
    }))


if __name__ == "__main__":
    main()
