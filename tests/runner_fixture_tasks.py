"""A small real task for the runner's tests: name the colour of a shape in a PNG file.

Importing this module writes 2 x 40 small PNG images (once, into
`$PALIMIX_RUNNER_FIXTURE_DIR` or the temp dir) and registers the seqio tasks
`runner_fixture_colors_en`, `runner_fixture_colors_de` and the mixture
`runner_fixture_colors`. Images are decoded from the files by tf.io like real data,
so the pipeline (and its iterator checkpoint) is the one real tasks have. The tests
pass `--module tests.runner_fixture_tasks` to the CLI, as a user registers their own
tasks.
"""

import os
import tempfile

import numpy as np
import seqio
import tensorflow as tf
from PIL import Image

IMAGE_SIZE = 32  # two 16-pixel patches a side: 4 image tokens for the tiny model
TASK_FEATURE_LENGTHS = {"inputs": 8, "targets": 8, "image": IMAGE_SIZE}
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
NAMES = {
    "en": {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"},
    "de": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"},
}
SPLITS = {"train": 32, "validation": 8}
MIXTURE = "runner_fixture_colors"
VOCABULARY = seqio.ByteVocabulary()


def fixture_dir() -> str:
    return os.environ.get("PALIMIX_RUNNER_FIXTURE_DIR",
                          os.path.join(tempfile.gettempdir(), "palimix_runner_fixture"))


def write_images(directory: str) -> dict[str, list[tuple[str, str]]]:
    """`split -> [(png path, colour)]`: a coloured square at a varying place on grey noise."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    files = {}
    for split, n in SPLITS.items():
        files[split] = []
        for i in range(n):
            colour = list(COLORS)[i % len(COLORS)]
            path = os.path.join(directory, f"{split}_{i:03d}.png")
            pixels = rng.integers(90, 140, size=(24, 24, 3), dtype=np.uint8)
            x, y = rng.integers(0, 12, size=2)
            pixels[y:y + 12, x:x + 12] = COLORS[colour]
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                Image.fromarray(pixels).save(tmp, format="PNG")
                os.replace(tmp, path)
            files[split].append((path, colour))
    return files


def _source(files, language):
    def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        paths, colours = zip(*files[split])
        names = [NAMES[language][c] for c in colours]
        return tf.data.Dataset.from_tensor_slices(
            {"path": list(paths), "targets": names, "id": [os.path.basename(p) for p in paths]})

    return seqio.FunctionDataSource(dataset_fn, splits=list(SPLITS),
                                    num_input_examples={k: v for k, v in SPLITS.items()})


def _decode(language):
    @seqio.map_over_dataset
    def decode(ex):
        image = tf.io.decode_png(tf.io.read_file(ex["path"]), channels=3)
        image = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE), antialias=True)
        return {"image": image / 127.5 - 1.0, "has_image": tf.constant([1], tf.int32),
                "inputs": tf.constant(f"colour {language}"), "targets": ex["targets"],
                "language": tf.constant(language), "kind": tf.constant("classification"),
                "id": ex["id"]}

    return decode


def accuracy(targets, predictions):
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def register() -> None:
    files = write_images(fixture_dir())
    features = {
        "inputs": seqio.Feature(VOCABULARY, add_eos=True),
        "targets": seqio.Feature(VOCABULARY, add_eos=True),
        "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
    }
    names = []
    for language in NAMES:
        name = f"{MIXTURE}_{language}"
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name, source=_source(files, language),
            preprocessors=[_decode(language), seqio.preprocessors.tokenize,
                           seqio.preprocessors.append_eos_after_trim],
            output_features=features, metric_fns=[accuracy])
        names.append(name)
    seqio.MixtureRegistry.remove(MIXTURE)
    seqio.MixtureRegistry.add(MIXTURE, names, default_rate=1.0)


register()
