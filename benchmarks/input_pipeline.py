"""Examples/s of a palimix caption task vs bare `tf.io.decode_jpeg + tf.image.resize`.

Both pipelines read the same photo-like 640x480 JPEGs (written to a temp folder in
COCO captions layout) and produce float32 [S, S, 3] images in [-1, 1]:

- bare:    file list -> tf.io.read_file -> tf.io.decode_jpeg -> tf.image.resize -> scale
- palimix: the seqio task `palimix.tasks.add_task(kind="caption", source=CocoCaptions)`
           registers: source -> decode_image (Pillow, JPEG draft mode, EXIF, drop
           counting) -> prompt + target -> tokenize -> EOS.
- also reported: `source_decode_per_s`, the source + `decode_image` alone.

Each pipeline runs `--rounds` times, alternating, with AUTOTUNE parallelism; the best
round of each counts (the machine may be shared). Last line: a JSON object with
palimix_per_s, bare_per_s and ratio (goal: >= 0.8).

    python benchmarks/input_pipeline.py [--images 300] [--image-size 224] [--rounds 3] [--no-task]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image


def write_coco_fixture(root: str, count: int, seed: int = 0) -> tuple[str, str]:
    """`count` photo-like 640x480 JPEGs (gradients, blobs, noise: they compress like
    photos, ~60-90 kB) and a COCO captions annotation file for them."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "val2017")
    os.makedirs(image_dir)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    images, annotations = [], []
    for i in range(count):
        angle, phase = rng.uniform(0, np.pi, 2)
        base = np.stack(
            [
                128 + 100 * np.sin(x / rng.uniform(40, 200) + phase),
                128 + 100 * np.cos(y / rng.uniform(40, 200) + angle),
                (x * np.cos(angle) + y * np.sin(angle)) % 256,
            ],
            -1,
        )
        for _ in range(6):  # A few soft blobs ("objects").
            cx, cy, r = rng.uniform(0, 640), rng.uniform(0, 480), rng.uniform(20, 120)
            mask = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
            base = base * (1 - mask) + rng.uniform(0, 255, 3) * mask
        pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        name = f"{i:012d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, name), "JPEG", quality=90)
        images.append({"id": i, "file_name": name, "width": 640, "height": 480})
        annotations.append({"id": i, "image_id": i, "caption": f"A colourful abstract picture number {i}."})
    annotations_json = os.path.join(root, "captions_val2017.json")
    with open(annotations_json, "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return annotations_json, image_dir


def bare_pipeline(paths: list[str], size: int) -> tf.data.Dataset:
    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.resize(image, [size, size])
        return {"image": image * (2.0 / 255.0) - 1.0}

    return tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def examples_per_second(make_dataset, count: int) -> float:
    dataset = make_dataset().prefetch(tf.data.AUTOTUNE)
    start = time.perf_counter()
    seen = 0
    for _ in dataset:
        seen += 1
    elapsed = time.perf_counter() - start
    if seen != count:
        raise RuntimeError(f"expected {count} examples, got {seen}")
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-task", action="store_true", help="measure source + decode_image only, without palimix.tasks")
    args = parser.parse_args()

    from palimix import sources
    from palimix.preprocessors import image

    with tempfile.TemporaryDirectory() as root:
        annotations_json, image_dir = write_coco_fixture(root, args.images)
        paths = [os.path.join(image_dir, f"{i:012d}.jpg") for i in range(args.images)]
        source = sources.CocoCaptions(annotations_json, image_dir, split="validation")

        try:
            if args.no_task:
                raise ImportError("--no-task")
            import seqio

            try:
                from palimix.tasks import add_task
            except ImportError:  # While palimix.tasks/__init__ does not export it yet.
                from palimix.tasks.registry import add_task

            add_task(
                "benchmark_input_pipeline", kind="caption", source=source, languages=["en"], image_size=args.image_size, overwrite=True
            )
            task = seqio.get_mixture_or_task("benchmark_input_pipeline_en")
            lengths = {"inputs": 16, "targets": 32}

            def palimix_task():
                return task.get_dataset(lengths, split="validation", shuffle=False)

            through = "palimix.tasks.add_task caption task (source, decode_image, prompt, tokenize)"
        except ImportError as e:  # The task layer is not there: measure source + decoder.
            palimix_task = None
            through = f"source + decode_image only (palimix.tasks unavailable: {e})"

        def source_decode():
            dataset = source.get_dataset("validation", shuffle=False)
            return image.decode_image(dataset, image_size=args.image_size, task_name="benchmark")

        def bare():
            return bare_pipeline(paths, args.image_size)

        # Warm up (graph tracing, file cache) before timing.
        for make in filter(None, (bare, source_decode, palimix_task)):
            examples_per_second(make, args.images)
        best = {"bare": 0.0, "source_decode": 0.0, "palimix": 0.0}
        for _ in range(args.rounds):
            best["bare"] = max(best["bare"], examples_per_second(bare, args.images))
            best["source_decode"] = max(best["source_decode"], examples_per_second(source_decode, args.images))
            if palimix_task:
                best["palimix"] = max(best["palimix"], examples_per_second(palimix_task, args.images))
        if not palimix_task:
            best["palimix"] = best["source_decode"]

    print(f"pipeline measured: {through}")
    print(f"{args.images} JPEGs 640x480 -> {args.image_size} px, best of {args.rounds} rounds, {os.cpu_count()} CPUs")
    for name, value in best.items():
        print(f"  {name:>14}: {value:8.1f} examples/s")
    result = {
        "palimix_per_s": round(best["palimix"], 1),
        "bare_per_s": round(best["bare"], 1),
        "ratio": round(best["palimix"] / best["bare"], 3),
        "source_decode_per_s": round(best["source_decode"], 1),
        "image_size": args.image_size,
        "images": args.images,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
