"""Seconds to build one task's tf.data pipeline (`task.get_dataset`), for demo tasks.

Building a pipeline traces every map/filter function of the task into a TF graph;
a mixture of 114 tasks pays it per task and per split (the demo builds train and
validation), so it is a visible share of a short run. This measures it for 12
`palimix_demo` tasks (two per per-language kind, and the two multilingual ones),
after one warm-up task (first-use costs: the vocabulary, TF's kernels), the way the
demo and the runner call it.

    python benchmarks/task_build.py [--repeat 1] [--profile 25]

`--profile N` prints the N costliest functions (cProfile, cumulative time).
Last line: a JSON object with per_task_s (mean) and the per-task times.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

TASKS = [
    "palimix_demo_caption_en", "palimix_demo_caption_de",
    "palimix_demo_vqa_fr", "palimix_demo_vqa_ja",
    "palimix_demo_classification_es", "palimix_demo_classification_ru",
    "palimix_demo_ocr_en", "palimix_demo_ocr_th",
    "palimix_demo_translation_de", "palimix_demo_translation_zh",
    "palimix_demo_span_corruption_mul", "palimix_demo_prefix_lm_mul",
]
WARM_UP = "palimix_demo_caption_it"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="build each task this many times (the best counts)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    args = parser.parse_args()

    import seqio

    from palimix.tasks import demo

    def build(name):
        task = seqio.get_mixture_or_task(name)
        return task.get_dataset(demo.TASK_FEATURE_LENGTHS, split="train", shuffle=True, seed=0, use_cached=False)

    next(iter(build(WARM_UP)))  # First-use costs, then only building is timed.
    profiler = cProfile.Profile() if args.profile else None
    seconds = {}
    for name in TASKS:
        best = float("inf")
        for _ in range(args.repeat):
            if profiler:
                profiler.enable()
            start = time.perf_counter()
            build(name)
            best = min(best, time.perf_counter() - start)
            if profiler:
                profiler.disable()
        seconds[name] = best
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    print(f"{len(TASKS)} demo tasks, best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    for name, s in seconds.items():
        print(f"  {name:<36} {s:6.3f} s")
    print(json.dumps({
        "per_task_s": round(sum(seconds.values()) / len(seconds), 4),
        "tasks": {name: round(s, 4) for name, s in seconds.items()},
    }))


if __name__ == "__main__":
    main()
