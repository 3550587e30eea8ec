"""The training loss of every palimix network: token cross entropy with T5X's z-loss.

One implementation for the embedded runner, the tests and the benchmarks (T5X runs use
t5x's own `compute_weighted_cross_entropy`, which computes the same quantities).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenLoss(NamedTuple):
    """Sums over the weighted target tokens of a batch."""

    total: jnp.ndarray  # cross entropy + z-loss: what the gradient follows
    cross_entropy: jnp.ndarray  # cross entropy alone (for reporting)
    num_tokens: jnp.ndarray  # sum of the weights
    correct: jnp.ndarray  # weighted tokens whose target has the largest logit

    @property
    def mean(self) -> jnp.ndarray:
        """The token-averaged loss (at least one token, so an empty batch gives 0)."""
        return self.total / jnp.maximum(self.num_tokens, 1.0)


def cross_entropy(logits, targets, weights=None, *, z_loss: float = 0.0) -> TokenLoss:
    """Weighted token cross entropy of `logits [B, T, V]` against `targets [B, T]`.

    weights default to `targets > 0` (token 0 is padding). z_loss adds
    `z_loss * log(Z)^2` per token (T5X's auxiliary loss: keeps the softmax normaliser
    near 1, which stabilises bf16 and Adafactor training).

    One log-sum-exp serves the cross entropy and the z-loss, and "correct" compares the
    target's logit with the row maximum instead of an argmax: on a tiny model the
    vocabulary-wide passes are a large part of the step.
    """
    weights = (targets > 0).astype(jnp.float32) if weights is None else weights.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    xent = log_z - target_logits
    # Ties with another token count as correct: float logits practically never tie.
    is_max = target_logits >= jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    return TokenLoss(
        total=jnp.sum((xent + z_loss * jnp.square(log_z)) * weights),
        cross_entropy=jnp.sum(xent * weights),
        num_tokens=jnp.sum(weights),
        correct=jnp.sum(is_max * weights),
    )


def sequence_log_likelihood(logits, targets, weights=None) -> jnp.ndarray:
    """Each sequence's weighted sum of target-token log-probabilities `[B]` (natural log):
    what T5X's `score_batch` returns and seqio's score metrics read (perplexity)."""
    weights = (targets > 0).astype(jnp.float32) if weights is None else weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(target_log_probs * weights, axis=-1)
