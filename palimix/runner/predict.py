"""Batched decoding of feature-converted examples with a trained network."""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import numpy as np


class Predictor:
    """`predict(batch) -> [B, max_decode_length]` token ids, EOS included, 0 after it.

    Every call runs one compiled program: a short last batch is padded to
    `batch_size` (and the padding rows dropped), so eval and infer compile once.
    """

    def __init__(self, run, *, batch_size: int, max_decode_length: int, method: str = "greedy",
                 num_beams: int = 4, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                 eos_id: int = 1):
        import jax

        from palimix.models import decoding

        self.run = run
        self.batch_size = int(batch_size)
        self.max_decode_length = int(max_decode_length)
        trainer = run.trainer
        self._trainer = trainer
        self._features = trainer.network.PREDICT_INPUTS  # What decoding reads of a batch.
        self._rng = jax.random.key(seed)
        generate = functools.partial(
            decoding.generate, trainer.network, max_decode_length=self.max_decode_length, method=method,
            eos_id=eos_id, num_beams=num_beams, temperature=temperature, top_k=top_k)
        if method == "sample":
            self._generate = jax.jit(lambda params, batch, rng: generate(params, batch, rng=rng))
        else:
            self._generate = jax.jit(lambda params, batch, rng: generate(params, batch))

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        import jax

        n = len(batch[self._features[0]])
        if n > self.batch_size:
            return np.concatenate([self.predict({k: v[i:i + self.batch_size] for k, v in batch.items()})
                                   for i in range(0, n, self.batch_size)])
        padded = {k: _pad_rows(np.asarray(batch[k]), self.batch_size) for k in self._features}
        self._rng, rng = jax.random.split(self._rng)
        with self._trainer.context():
            tokens, _ = self._generate(self.run.params, self._trainer.shard_batch(padded), rng)
        return np.asarray(jax.device_get(tokens))[:n]

    def predict_all(self, examples: Iterable[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
        """Token rows for unbatched feature-converted examples, in order."""
        out, buffer = [], []
        for example in examples:
            buffer.append(example)
            if len(buffer) == self.batch_size:
                out.extend(self.predict(self._stack(buffer)))
                buffer = []
        if buffer:
            out.extend(self.predict(self._stack(buffer)))
        return out

    def _stack(self, examples):
        return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in self._features}


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def strip_tokens(tokens, eos_id: int = 1) -> list[int]:
    """Ids up to (not including) the first EOS, padding dropped."""
    ids = [int(t) for t in tokens]
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return [t for t in ids if t != 0]
