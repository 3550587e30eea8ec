"""Batched decoding (`Predictor`) and target scoring (`Scorer`) of feature-converted
examples with a trained network."""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import numpy as np

from palimix.errors import UsageError


class Predictor:
    """`predict(batch) -> [B, max_decode_length]` token ids, EOS included, 0 after it.

    Every call runs one compiled program: a short last batch is padded to
    `batch_size` (and the padding rows dropped), so eval and infer compile once.
    guidance_scale: classifier-free guidance (palimix.models.decoding); `predict` and
    `predict_all` then take the unconditional twin of each batch or example.
    token_mask: the ids each step may choose (decoding.ImageCodeMask: whole images).
    """

    def __init__(self, run, *, batch_size: int, max_decode_length: int, method: str = "greedy",
                 num_beams: int = 4, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                 eos_id: int | None = 1, guidance_scale: float | None = None, token_mask=None):
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
            eos_id=eos_id, num_beams=num_beams, temperature=temperature, top_k=top_k, token_mask=token_mask)
        self.guided = guidance_scale is not None
        if self.guided:
            generate = functools.partial(generate, guidance_scale=guidance_scale)
        samples = method == "sample"  # (the other methods take no rng)
        self._generate = jax.jit(lambda params, batch, unconditional, rng: generate(
            params, batch, unconditional=unconditional, rng=rng if samples else None))

    def predict(self, batch: Mapping[str, np.ndarray],
                unconditional: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        import jax

        if self.guided != (unconditional is not None):
            raise UsageError("a guided Predictor takes each batch's unconditional twin, and only it does.")
        n = len(batch[self._features[0]])
        if n > self.batch_size:
            rows = lambda b, i: None if b is None else {k: v[i:i + self.batch_size] for k, v in b.items()}  # noqa: E731
            return np.concatenate([self.predict(rows(batch, i), rows(unconditional, i))
                                   for i in range(0, n, self.batch_size)])
        padded, padded_unconditional = (
            None if b is None else self._trainer.shard_batch({k: _pad_rows(np.asarray(b[k]), self.batch_size)
                                                              for k in self._features})
            for b in (batch, unconditional))
        self._rng, rng = jax.random.split(self._rng)
        with self._trainer.context():
            tokens, _ = self._generate(self.run.params, padded, padded_unconditional, rng)
        return np.asarray(jax.device_get(tokens))[:n]

    def predict_all(self, examples: Iterable[Mapping[str, np.ndarray]],
                    unconditional: Iterable[Mapping[str, np.ndarray]] | None = None) -> list[np.ndarray]:
        """Token rows for unbatched feature-converted examples, in order (guided: with
        each example's unconditional twin, in the same order)."""
        pairs = zip(examples, unconditional) if unconditional is not None else ((e, None) for e in examples)
        out, buffer = [], []
        for pair in pairs:
            buffer.append(pair)
            if len(buffer) == self.batch_size:
                out.extend(self._predict_buffer(buffer))
                buffer = []
        if buffer:
            out.extend(self._predict_buffer(buffer))
        return out

    def _predict_buffer(self, pairs):
        conditional = self._stack([c for c, _ in pairs])
        return self.predict(conditional, self._stack([u for _, u in pairs]) if self.guided else None)

    def _stack(self, examples):
        return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in self._features}


class Scorer:
    """`score(batch) -> [B]` log-likelihoods of each example's target tokens (its
    `decoder_loss_weights`: the answer and EOS) under the run's network, teacher-forced:
    seqio's score metrics (perplexity) read them, as T5X's `score_batch` gives them.
    A short last batch is padded to `batch_size`, as for `Predictor`."""

    def __init__(self, run, *, batch_size: int):
        import jax

        from palimix.models import losses, networks

        self.run = run
        self.batch_size = int(batch_size)
        trainer = self._trainer = run.trainer
        network = trainer.network
        self._features = tuple(network.INPUTS) + ("decoder_loss_weights",)

        def score(params, batch):
            logits = network.apply({"params": params}, *networks.inputs(network, batch), enable_dropout=False)
            return losses.sequence_log_likelihood(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])

        self._score = jax.jit(score)

    def score(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        import jax

        n = len(batch["decoder_target_tokens"])
        if n > self.batch_size:
            return np.concatenate([self.score({k: v[i:i + self.batch_size] for k, v in batch.items()})
                                   for i in range(0, n, self.batch_size)])
        padded = {k: _pad_rows(np.asarray(batch[k]), self.batch_size) for k in self._features if k in batch}
        with self._trainer.context():
            scores = self._score(self.run.params, self._trainer.shard_batch(padded))
        return np.asarray(jax.device_get(scores))[:n]

    def score_all(self, examples: Iterable[Mapping[str, np.ndarray]]) -> list[float]:
        """Log-likelihoods of unbatched feature-converted examples, in order."""
        examples = list(examples)
        out = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i:i + self.batch_size]
            keys = [k for k in self._features if k in chunk[0]]
            out.extend(float(s) for s in self.score({k: np.stack([np.asarray(e[k]) for e in chunk]) for k in keys}))
        return out


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
