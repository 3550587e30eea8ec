"""Which input a training run reads: batches streamed through seqio's tf.data pipeline
(`data.TrainBatches`) or sampled from memory (`memory_data.MemoryBatches`).

Both read the same tasks and feature converter; this module picks one, so neither
needs the other (memory_data uses data's task lookup, nothing goes back).
"""

from __future__ import annotations

from typing import Mapping

from palimix.errors import UsageError, close_matches_hint
from palimix.runner import data, memory_data

INPUT_MODES = ("auto", "memory", "stream")


def choose_input_mode(mode: str, name: str, split: str, task_feature_lengths: Mapping[str, int],
                      memory_limit_mb: float) -> str:
    """"memory" or "stream" for `mode` ("auto": memory when the split's examples, each
    with its own image, fit in `memory_limit_mb`)."""
    if mode not in INPUT_MODES:
        raise UsageError(f"unknown input mode {mode!r}; choose from {', '.join(INPUT_MODES)}."
                         + close_matches_hint(mode, INPUT_MODES))
    if mode != "auto":
        return mode
    needed = memory_data.estimated_bytes(data.get_mixture_or_task(name), split, task_feature_lengths)
    return "memory" if needed is not None and needed <= memory_limit_mb * 2**20 else "stream"


def train_batches(mode: str, name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *,
                  converter, seed: int = 0, split: str = "train", memory_passes: int = 2):
    """The train iterator for an input mode chosen by `choose_input_mode`; `converter`
    makes the network's model features (`networks.feature_converter(config)`)."""
    if mode == "memory":
        return memory_data.MemoryBatches(name, task_feature_lengths, batch_size, converter=converter, seed=seed,
                                         split=split, passes=memory_passes)
    return data.TrainBatches(name, task_feature_lengths, batch_size, converter=converter, seed=seed, split=split)
