"""Learning-rate schedules and the optimizer of the embedded runner.

The defaults follow T5X's (and PaLI's) recipe: Adafactor with a linear warmup
followed by a reciprocal square-root decay. Cosine and constant decays are there
for fine-tuning, as big_vision offers them.
"""

from __future__ import annotations

import optax

from palimix.errors import UsageError, close_matches_hint

SCHEDULES = ("rsqrt", "cosine", "constant", "linear")
OPTIMIZERS = ("adafactor", "adamw", "sgd")


def learning_rate_schedule(
    name: str = "rsqrt",
    *,
    base_learning_rate: float = 1e-2,
    warmup_steps: int = 1000,
    total_steps: int = 10_000,
    end_learning_rate_fraction: float = 0.0,
) -> optax.Schedule:
    """`step -> learning rate`: a linear warmup from 0, then the named decay.

    rsqrt: base * sqrt(warmup / step) after warmup (t5x's `rsqrt_decay`), so the
      rate is continuous at the end of the warmup.
    cosine: from base down to `end_learning_rate_fraction * base` at `total_steps`.
    linear: the same, linearly.
    constant: base after warmup.
    """
    if name not in SCHEDULES:
        raise UsageError(f"unknown learning-rate schedule {name!r}; choose from {', '.join(SCHEDULES)}."
                         + close_matches_hint(name, SCHEDULES))
    if base_learning_rate <= 0:
        raise UsageError(f"the learning rate must be positive, got {base_learning_rate}")
    warmup_steps = max(0, int(warmup_steps))
    decay_steps = max(1, int(total_steps) - warmup_steps)
    end_value = base_learning_rate * end_learning_rate_fraction
    if name == "rsqrt":
        # Continuous at the warmup boundary: base * sqrt(max(warmup, 1) / max(step, warmup, 1)).
        pivot = max(warmup_steps, 1)

        def decay(count):
            import jax.numpy as jnp

            return base_learning_rate * jnp.sqrt(pivot / jnp.maximum(count + warmup_steps, pivot))

    elif name == "cosine":
        decay = optax.cosine_decay_schedule(base_learning_rate, decay_steps, alpha=end_learning_rate_fraction)
    elif name == "linear":
        decay = optax.linear_schedule(base_learning_rate, end_value, decay_steps)
    else:
        decay = optax.constant_schedule(base_learning_rate)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def optimizer(
    name: str = "adafactor",
    schedule: optax.Schedule | float = 1e-2,
    *,
    weight_decay: float = 0.0,
    clip_gradient_norm: float | None = None,
) -> optax.GradientTransformation:
    """The optimizer with its schedule; Adafactor factors every matrix >= 128 wide.

    Adafactor's factoring in optax depends only on parameter shapes, so the ViT's
    parameters are factored like the text side's without per-axis rules.
    """
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}."
                         + close_matches_hint(name, OPTIMIZERS))
    if name == "adafactor":
        # t5x's defaults: no momentum, update clipping at 1.0, relative steps off
        # (the schedule gives the rate), parameter scaling on.
        core = optax.adafactor(learning_rate=schedule, multiply_by_parameter_scale=True,
                               clipping_threshold=1.0, decay_rate=0.8,
                               weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        core = optax.adamw(learning_rate=schedule, b1=0.9, b2=0.999, weight_decay=weight_decay)
    else:
        core = optax.sgd(learning_rate=schedule, momentum=0.9)
    if clip_gradient_norm:
        return optax.chain(optax.clip_by_global_norm(clip_gradient_norm), core)
    return core
