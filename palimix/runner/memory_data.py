"""Train batches from a small task or mixture held in memory, sampled with numpy.

A mixture like `palimix_demo` (7k examples) is cheap to hold but dear to stream: its
tf.data pipelines compete with the training step for the same few CPU cores (on 2
cores the demo's step took 0.47 s instead of 0.27 s), and filling their shuffle
buffers delays the first step. `MemoryBatches` runs every task's seqio pipeline once (the same preprocessors
and feature converter as `TrainBatches`, as seqio's own cached tasks do offline) and
then assembles each batch with numpy in well under a millisecond.

- Stochastic preprocessing (a caption sampled from the references, span-corruption
  noise) gets `passes` draws: the task is read for `passes` epochs (seqio repeats
  before its preprocessors, so every epoch draws anew) and identical examples are
  kept once, so a deterministic task costs one copy.
- Images are stored once per distinct image (the demo's caption, VQA and
  classification tasks of 25 languages share their scenes).
- Sampling follows the mixture's rates: each batch slot picks a task with
  probability rate / total (seqio's `get_rate`, nested mixtures included), and each
  task is read in a fresh seeded permutation per epoch (without replacement, like a
  shuffled, repeated tf.data task).
- The position is a few counters: checkpointed as JSON, restored exactly and
  instantly, so a resumed run reads the batches an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Iterator, Mapping

import numpy as np

from palimix.errors import UsageError
from palimix.runner import data as data_lib

log = logging.getLogger(__name__)

_STATE_FILE = "position.json"
IMAGE_KEY = "encoder_images"


def estimated_bytes(provider, split: str, task_feature_lengths: Mapping[str, int]) -> int | None:
    """Upper bound of the memory `MemoryBatches` needs for `split` (every example with
    its own image and token rows), or None when a task cannot count its examples."""
    import seqio

    data_lib.check_split(provider, split)
    size = int(task_feature_lengths.get("image", 0))
    per_example = size * size * 3 * 4 + 4 * 2 * sum(int(v) for k, v in task_feature_lengths.items() if k != "image")
    total = 0
    for task in seqio.get_subtasks(provider):
        try:
            count = task.num_input_examples(split)
        except NotImplementedError:  # A source that cannot count its examples: stream instead.
            count = None
        if count is None:
            return None
        total += int(count)
    return total * per_example


def task_rates(provider) -> list[tuple[object, float]]:
    """(task, rate) of every leaf task with a positive rate (a task alone: rate 1)."""
    import seqio

    if isinstance(provider, seqio.Task):
        return [(provider, 1.0)]
    rates = [(task, float(provider.get_rate(task))) for task in provider.tasks]
    return [(task, rate) for task, rate in rates if rate > 0]


class MemoryBatches:
    """An endless, deterministic iterator of feature-converted train batches from
    memory; the same interface as `palimix.runner.data.TrainBatches`."""

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 batch_size: int, *, converter, seed: int = 0, split: str = "train", passes: int = 2,
                 shard_id: int = 0, num_shards: int = 1):
        if passes < 1:
            raise UsageError(f"passes must be >= 1, got {passes}.")
        self.name = mixture_or_task_name
        self.converter = converter  # The network's feature converter (as TrainBatches).
        self.task_feature_lengths = dict(task_feature_lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.split = split
        self.passes = int(passes)
        self.batches_consumed = 0
        self.wait_seconds = 0.0
        provider = data_lib.get_mixture_or_task(mixture_or_task_name)
        data_lib.check_split(provider, split)
        start = time.perf_counter()
        self._tasks: list[dict[str, np.ndarray]] = []
        names, rates = [], []
        tasks = task_rates(provider)
        columns, self._image_pool = self._read(tasks, shard_id, num_shards)
        for (task, rate), task_columns in zip(tasks, columns):
            if task_columns is None:
                log.warning("%s has no %s examples (after dropping bad images); it is left out of %s.",
                            task.name, split, mixture_or_task_name)
                continue
            names.append(task.name)
            rates.append(rate)
            self._tasks.append(task_columns)
        if not self._tasks:
            raise UsageError(f"{mixture_or_task_name} has no {split} examples to train on.")
        self.task_names = names
        self._probabilities = np.asarray(rates, np.float64) / sum(rates)
        self._positions = np.zeros(len(self._tasks), np.int64)
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}
        self.num_examples = sum(len(t["_image"]) for t in self._tasks)
        self.read_seconds = time.perf_counter() - start
        log.info("Read %d distinct %s examples of %d tasks (%d distinct images, %.0f MB) into memory in %.1f s.",
                 self.num_examples, split, len(self._tasks), len(self._image_pool), self.nbytes / 2**20,
                 self.read_seconds)

    @property
    def nbytes(self) -> int:
        return int(self._image_pool.nbytes + sum(a.nbytes for t in self._tasks for a in t.values()))

    def _read(self, tasks, shard_id: int, num_shards: int) -> tuple[list[dict[str, np.ndarray] | None], np.ndarray]:
        """Every task's feature-converted examples as column arrays (the image replaced by
        its index in the pool), duplicates dropped, None for a task without examples;
        and the pool of distinct images [N, S, S, 3].

        The tasks' datasets are concatenated and read by ONE iterator: creating a
        tf.data iterator costs ~0.3 s, once per task would be most of the read time.
        """
        import seqio
        import tensorflow as tf

        start = time.perf_counter()
        tf.random.set_seed(self.seed)  # As TrainBatches: the same draws in every build.
        datasets = []
        for index, (task, _) in enumerate(tasks):
            ds = task.get_dataset(
                sequence_length=self.task_feature_lengths, split=self.split, shuffle=False,
                num_epochs=self.passes, seed=self.seed, use_cached=False,
                shard_info=seqio.ShardInfo(shard_id, num_shards) if num_shards > 1 else None)
            ds = self.converter(ds, self.task_feature_lengths)
            datasets.append(tf.data.Dataset.zip(tf.data.Dataset.from_tensors(index).repeat(), ds))
        while len(datasets) > 1:  # A balanced tree of concatenations, not a 100-deep chain.
            datasets = [a.concatenate(b) for a, b in zip(datasets[::2], datasets[1::2])] + (
                [datasets[-1]] if len(datasets) % 2 else [])
        log.info("Built the input pipelines of %d tasks in %.1f s.", len(tasks), time.perf_counter() - start)
        rows: list[dict[str, list[np.ndarray]]] = [{} for _ in tasks]
        seen: set[tuple[int, bytes]] = set()
        image_index: dict[bytes, int] = {}
        images: list[np.ndarray] = []
        # Batched and prefetched: tf.data decodes ahead while Python files the rows.
        batched = datasets[0].batch(256).prefetch(tf.data.AUTOTUNE)
        for indices, columns in batched.as_numpy_iterator():
            for row, index in enumerate(indices.tolist()):
                _add(rows[index], {k: v[row] for k, v in columns.items()}, index, seen, image_index, images)
        return ([{k: np.stack(v) for k, v in task_rows.items()} if task_rows else None for task_rows in rows],
                np.stack(images))

    def _take(self, task: int) -> int:
        """The next example of `task` in its current epoch's permutation."""
        size = len(self._tasks[task]["_image"])
        epoch, offset = divmod(int(self._positions[task]), size)
        cached = self._permutations.get(task)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, task, epoch]).permutation(size)
            self._permutations[task] = cached = (epoch, order)
        self._positions[task] += 1
        return int(cached[1][offset])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        # The tasks of batch k depend only on (seed, k); the examples on the counters.
        chooser = np.random.default_rng([self.seed, 2**31 + self.batches_consumed])
        picks = chooser.choice(len(self._tasks), size=self.batch_size, p=self._probabilities)
        rows = [(t, self._take(t)) for t in picks.tolist()]
        batch = {k: np.stack([self._tasks[t][k][i] for t, i in rows]) for k in self._tasks[0] if k != "_image"}
        batch[IMAGE_KEY] = self._image_pool[[self._tasks[t]["_image"][i] for t, i in rows]]
        self.batches_consumed += 1
        self.wait_seconds += time.perf_counter() - start
        return batch

    # -- checkpointing (see palimix.runner.checkpoints.IteratorHandler) --------------

    def _identity(self) -> dict:
        return {"name": self.name, "seed": self.seed, "batch_size": self.batch_size, "passes": self.passes,
                "tasks": self.task_names}

    def save_state(self, directory: str) -> None:
        with open(os.path.join(directory, _STATE_FILE), "w") as f:
            json.dump({"mode": "memory", "batches_consumed": self.batches_consumed,
                       "positions": self._positions.tolist(), **self._identity()}, f)

    def restore_state(self, directory: str) -> None:
        with open(os.path.join(directory, _STATE_FILE)) as f:
            state = json.load(f)
        mine = self._identity()
        if state.get("mode") != "memory" or any(state.get(k) != v for k, v in mine.items()):
            raise UsageError(
                f"the checkpoint's input position was written by another input setup "
                f"({state.get('mode')} input on {state.get('name')!r}, batch size {state.get('batch_size')}, "
                f"seed {state.get('seed')}); this run reads {self.name!r} from memory with batch size "
                f"{self.batch_size}, seed {self.seed}. Use another --model_dir or the same settings.")
        self.batches_consumed = int(state["batches_consumed"])
        self._positions = np.asarray(state["positions"], np.int64)
        self._permutations.clear()


def _add(rows: dict, example: dict, index: int, seen: set, image_index: dict, images: list) -> None:
    """Files one example under its task (its image by pool index), unless seen."""
    image = example.pop(IMAGE_KEY)
    key = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    if key not in image_index:
        image_index[key] = len(images)
        images.append(image)
    example["_image"] = np.asarray(image_index[key], np.int64)
    identity = hashlib.blake2b(b"".join(example[k].tobytes() for k in sorted(example)),
                               digest_size=16).digest()
    if (index, identity) in seen:
        return
    seen.add((index, identity))
    for k, v in example.items():
        rows.setdefault(k, []).append(v)
