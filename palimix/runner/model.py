"""The runner's view of the palimix model: build the network from a config name, the
training loss, the sharding of its parameters over the local devices, and decoding.

Everything model-specific the runner needs goes through this module, so the train,
eval and infer loops stay independent of how `palimix.models` is laid out.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np

# The model features the network reads, in the order of its __call__ arguments.
NETWORK_INPUTS = ("encoder_images", "encoder_image_mask", "encoder_input_tokens",
                  "decoder_input_tokens", "decoder_target_tokens")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the network of a run (written to `<model_dir>/run.json`)."""

    name: str = "tiny"
    vocab_size: int = 0
    image_size: int = 224

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def build_network(spec: ModelSpec):
    """The flax module (a `palimix.models` PaLI network) for `spec`."""
    from palimix.models import configs, pali

    return pali.Pali(configs.get(spec.name, vocab_size=configs.round_vocab_size(spec.vocab_size),
                                 image_size=spec.image_size))


def logical_param_specs(abstract_variables):
    """Logical axis names of every parameter, as PartitionSpecs: from t5x-style
    `params_axes` (what palimix's layers write) or flax's boxed metadata."""
    from flax import linen as nn
    from flax.linen import partitioning as nn_partitioning

    if "params_axes" in abstract_variables:
        from flax.core import unfreeze

        return unfreeze(nn_partitioning.get_axis_names(abstract_variables["params_axes"]))
    return nn.get_partition_spec(abstract_variables)["params"]


def network_inputs(batch: Mapping[str, Any]) -> tuple:
    return tuple(batch[k] for k in NETWORK_INPUTS)


def dummy_batch(batch_size: int, task_feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Zeros with the shapes of a feature-converted batch (for initialisation)."""
    s = task_feature_lengths["image"]
    return {
        "encoder_images": np.zeros((batch_size, s, s, 3), np.float32),
        "encoder_image_mask": np.ones((batch_size,), np.int32),
        "encoder_input_tokens": np.ones((batch_size, task_feature_lengths["inputs"]), np.int32),
        "decoder_input_tokens": np.ones((batch_size, task_feature_lengths["targets"]), np.int32),
        "decoder_target_tokens": np.ones((batch_size, task_feature_lengths["targets"]), np.int32),
        "decoder_loss_weights": np.ones((batch_size, task_feature_lengths["targets"]), np.float32),
    }


def cross_entropy_loss(logits, targets, weights, *, z_loss: float = 1e-4):
    """Token-averaged cross entropy over the target tokens, plus T5X's z-loss
    (keeps the softmax normaliser near 1; it stabilises bf16 and Adafactor training).

    Returns `(loss, (sum of per-token cross entropy, number of target tokens, correct))`.
    One log-sum-exp serves the cross entropy and the z-loss, and "correct" compares the
    target's logit with the row maximum instead of an argmax: on a tiny model the
    vocabulary-wide passes are a large part of the step.
    """
    import jax
    import jax.numpy as jnp

    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    xent = log_z - target_logits
    total = jnp.sum((xent + z_loss * jnp.square(log_z)) * weights)
    num_tokens = jnp.maximum(jnp.sum(weights), 1.0)
    # Ties with another token count as correct: float logits practically never tie.
    correct = jnp.sum((target_logits >= jax.lax.stop_gradient(jnp.max(logits, axis=-1))) * weights)
    return total / num_tokens, (jnp.sum(xent * weights), num_tokens, correct)


def partitioning_rules() -> tuple:
    """Logical-axis -> mesh-axis rules: the model's own, or data parallelism only."""
    try:
        from palimix.models import partitioning
    except ImportError:
        return (("batch", "data"),)
    for name in ("RULES", "DEFAULT_RULES", "default_rules", "logical_axis_rules"):
        rules = getattr(partitioning, name, None)
        if rules is not None:
            return tuple(rules() if callable(rules) else rules)
    return (("batch", "data"),)


def mesh_shardings(logical_specs, mesh, rules):
    """NamedShardings for every parameter from its logical axis names and `rules`.

    A logical name that repeats within one array (a ViT patch-embedding kernel names
    both patch dimensions alike) is kept on its first dimension only; flax's mapping
    refuses repeats. Names without a rule are replicated.
    """
    import jax
    from flax import linen as nn
    from jax.sharding import NamedSharding, PartitionSpec

    def one(spec):
        seen, names = set(), []
        for name in spec:
            names.append(None if isinstance(name, str) and name in seen else name)
            if isinstance(name, str):
                seen.add(name)
        mesh_axes = nn.logical_to_mesh_axes(tuple(names), rules)
        return NamedSharding(mesh, PartitionSpec() if mesh_axes is None else mesh_axes)

    return jax.tree.map(one, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def spec_from_json(path: str) -> ModelSpec:
    with open(path, encoding="utf-8") as f:
        return ModelSpec.from_dict(json.load(f)["model"])
