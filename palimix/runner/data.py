"""Input batches for the embedded runner: the same SeqIO datasets and feature
converter that T5X reads, as numpy batches, with a position that checkpoints.

The train iterator's position is saved with each checkpoint as a tf.data iterator
checkpoint (shuffle buffers, mixture sampling state and all), so a resumed run reads
exactly the batches an uninterrupted run would have read. A pipeline that tf.data
cannot checkpoint (a Python generator source, a `tf.py_function` with state) falls
back to deterministic replay: the same seeded pipeline is rebuilt and the batches
already consumed are skipped, which is exact too, only slower to resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterator, Mapping

import numpy as np

from palimix.errors import UnknownNameError, UsageError, close_matches_hint

log = logging.getLogger(__name__)

_STATE_FILE = "position.json"
_TF_CHECKPOINT = "tf_iterator"


def get_mixture_or_task(name: str):
    """The registered seqio task or mixture, or a clear error with close matches."""
    import seqio

    import palimix.tasks  # noqa: F401  (registers palimix's tasks on import)

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        raise UnknownNameError(
            f"no task or mixture named {name!r} ({len(known)} registered; `palimix list` shows them)."
            + close_matches_hint(name, known)) from None


def check_split(provider, split: str) -> None:
    import seqio

    tasks = seqio.get_subtasks(provider)
    missing = [t.name for t in tasks if split not in t.splits]
    if missing:
        have = sorted({s for t in tasks for s in t.splits})
        raise UsageError(f"split {split!r} is missing from {len(missing)} task(s), e.g. {missing[0]}; "
                         f"splits there: {', '.join(have)}.")


def _numpy_batch(batch) -> dict[str, np.ndarray]:
    return {k: v._numpy() for k, v in batch.items()}  # pylint: disable=protected-access


class TrainBatches:
    """An endless, deterministic iterator of feature-converted train batches.

    `next(batches)` gives a dict of numpy arrays (the model features `converter`
    makes: the network's, `palimix.models.networks.feature_converter(config)`);
    `save_state`/`restore_state` make its position part of a checkpoint.
    `wait_seconds` accumulates the time spent waiting for input.
    """

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 batch_size: int, *, converter, seed: int = 0, split: str = "train", shard_id: int = 0,
                 num_shards: int = 1):
        self.name = mixture_or_task_name
        self.converter = converter
        self.task_feature_lengths = dict(task_feature_lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.split = split
        self._shard = (shard_id, num_shards)
        self.batches_consumed = 0
        self.wait_seconds = 0.0
        self._dataset = self._build()
        self._iterator = iter(self._dataset)
        self._tf_checkpointable = True

    def _build(self):
        import seqio
        import tensorflow as tf

        provider = get_mixture_or_task(self.name)
        check_split(provider, self.split)
        # Resets TF's op-seed counter too: ops seeded only by the global seed then draw
        # the same numbers in every build of the pipeline, in this process or the next
        # (replay depends on it, and so does comparing runs).
        tf.random.set_seed(self.seed)
        ds = provider.get_dataset(
            sequence_length=self.task_feature_lengths, split=self.split, shuffle=True,
            num_epochs=None, seed=self.seed, use_cached=False,
            shard_info=seqio.ShardInfo(*self._shard) if self._shard[1] > 1 else None)
        ds = self.converter(ds, self.task_feature_lengths)
        ds = ds.batch(self.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True  # Resume must see the same batches in the same order.
        # A stateful op outside tf.data's knowledge makes the iterator checkpoint fail
        # loudly; we then switch to replay instead of saving a wrong position.
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
        return ds.with_options(options)

    @property
    def element_spec(self):
        return self._dataset.element_spec

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        batch = _numpy_batch(next(self._iterator))
        self.wait_seconds += time.perf_counter() - start
        self.batches_consumed += 1
        return batch

    # -- checkpointing (see palimix.runner.checkpoints.IteratorHandler) --------------

    def save_state(self, directory: str) -> None:
        import tensorflow as tf

        mode = "replay"
        if self._tf_checkpointable:
            try:
                tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(directory, _TF_CHECKPOINT))
                mode = "tf_iterator"
            except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError, ValueError) as e:
                self._tf_checkpointable = False
                log.warning("The input pipeline of %s cannot be checkpointed by tf.data (%s); "
                            "resuming will replay the %d batches already read instead.",
                            self.name, str(e).splitlines()[0], self.batches_consumed)
        with open(os.path.join(directory, _STATE_FILE), "w") as f:
            json.dump({"batches_consumed": self.batches_consumed, "mode": mode, "seed": self.seed,
                       "batch_size": self.batch_size, "name": self.name}, f)

    def restore_state(self, directory: str) -> None:
        import tensorflow as tf

        with open(os.path.join(directory, _STATE_FILE)) as f:
            state = json.load(f)
        if state.get("mode") not in ("tf_iterator", "replay"):
            raise UsageError(f"the checkpoint's input position was written by {state.get('mode')!r} input; "
                             "this run streams its input. Use the same --input_mode, or another --model_dir.")
        if (state["seed"], state["batch_size"], state["name"]) != (self.seed, self.batch_size, self.name):
            raise UsageError(
                f"the checkpoint was written by a run on {state['name']!r} with batch size "
                f"{state['batch_size']} and seed {state['seed']}; this run asks for {self.name!r}, "
                f"{self.batch_size}, {self.seed}. Use another --model_dir or the same settings.")
        # A fresh dataset: a second iterator over the same one would draw another
        # shuffle order (tf.data reshuffles per iterator), unlike the first run's.
        self._dataset = self._build()
        self._iterator = iter(self._dataset)
        if state["mode"] == "tf_iterator":
            tf.train.Checkpoint(iterator=self._iterator).read(
                os.path.join(directory, _TF_CHECKPOINT)).assert_consumed()
        else:
            start = time.perf_counter()
            for _ in range(state["batches_consumed"]):
                next(self._iterator)
            log.info("Replayed %d input batches in %.1f s.", state["batches_consumed"],
                     time.perf_counter() - start)
        self.batches_consumed = state["batches_consumed"]
