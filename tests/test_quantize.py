"""Frozen weights in 8 bits (palimix.models.quantize): per-output-channel int8 storage
of the language model's kernels and embeddings, the int8 networks' logits against the
float ones, the memory of the frozen weights, and LoRA training beside them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palimix.errors import UsageError
from palimix.models import checkpoints, configs, lora, networks, quantize, trainable

NETWORKS = [("tiny", {}), ("tiny_decoder", {"llm_num_kv_heads": 2}), ("tiny_decoder", {"llm_num_kv_heads": 4})]


def test_quantize_per_output_channel():
    w = np.random.default_rng(0).normal(size=(3, 16, 5)).astype(np.float32) * np.array([1, 10, 100])[:, None, None]
    q, scale = quantize.quantize(w, (1,))
    assert q.dtype == jnp.int8 and scale.shape == (3, 5)
    np.testing.assert_allclose(np.abs(np.asarray(q)).max(axis=1), 127)  # every channel uses the full range
    error = np.abs(np.asarray(quantize.dequantize(q, scale, (1,), jnp.float32)) - w)
    assert (error <= np.asarray(scale)[:, None, :] / 2 + 1e-6).all()
    # A zero channel stays zero (no division by zero).
    q0, s0 = quantize.quantize(np.zeros((4, 2), np.float32), (0,))
    assert not np.asarray(q0).any() and np.isfinite(np.asarray(s0)).all()


def _language_model(params):
    return {k: v for k, v in params.items() if k not in checkpoints.IMAGE_SIDE}


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", NETWORKS)
def test_int8_network_logits_and_memory(name, overrides):
    config = configs.get(name, **overrides)
    int8 = configs.get(name, int8_kernels=True, **overrides)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    quantized = quantize.quantize_params(params, int8)
    # The int8 network's own initialisation has the same tree, names and dtypes.
    fresh = jax.eval_shape(lambda: networks.init_params(int8, jax.random.PRNGKey(0)))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(quantized)
    dtypes = [x.dtype for x in jax.tree_util.tree_leaves(fresh)]
    assert dtypes == [x.dtype for x in jax.tree_util.tree_leaves(quantized)]
    names = trainable.flat_names(quantized)
    int8_names = [n for n, x in zip(names, jax.tree_util.tree_leaves(quantized)) if x.dtype == jnp.int8]
    assert len(int8_names) >= 9 and not any(n.startswith("img/") for n in int8_names)
    ratio = quantize.nbytes(_language_model(quantized)) / quantize.nbytes(_language_model(params))
    assert ratio <= 0.30, ratio
    batch = networks.dummy_batch(config, 2, {"inputs": 6, "targets": 5})
    rng = np.random.default_rng(0)
    batch = dict(batch, encoder_images=jnp.asarray(rng.uniform(-1, 1, batch["encoder_images"].shape), jnp.float32))

    def logits(cfg, p):
        network = networks.build(cfg)
        return np.asarray(jax.jit(lambda p: network.apply({"params": p}, *networks.inputs(network, batch),
                                                          enable_dropout=False))(p))

    full, low = logits(config, params), logits(int8, quantized)
    assert np.abs(full - low).max() < 0.02 * np.abs(full).max()
    assert (full.argmax(-1) == low.argmax(-1)).mean() > 0.9


@pytest.mark.slow
def test_lora_trains_beside_int8_frozen_weights():
    config = configs.get("tiny", int8_kernels=True, lora_targets=list(configs.LORA_TARGETS), lora_rank=2)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    mask = trainable.ParamSelection(trainable=[lora.TRAINABLE_PATTERN]).mask(params)
    train, frozen = trainable.split(params, mask)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(train))
    network = networks.build(config)
    batch = networks.dummy_batch(config, 2, {"inputs": 6, "targets": 5})

    def loss(train_part):
        out = network.apply({"params": trainable.merge(train_part, frozen)}, *networks.inputs(network, batch),
                            enable_dropout=False)
        return jnp.mean(out ** 2)

    grads = jax.jit(jax.grad(loss))(train)
    # B starts at zero, so A's gradient is zero; B's is not.
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(grads))
    with pytest.raises(UsageError, match="int8"):
        lora.merge(params, 1.0)
    with pytest.raises(UsageError, match="int8-stored weights"):
        trainable.ParamSelection().mask(params)


def test_float_checkpoint_into_int8_params_is_refused():
    int8 = configs.get("tiny", int8_kernels=True)
    shapes = jax.eval_shape(lambda: networks.init_params(int8, jax.random.PRNGKey(0)))
    leaves = jax.tree_util.tree_leaves(shapes)
    flat = {n: np.zeros(x.shape, np.float32) for n, x in zip(trainable.flat_names(shapes), leaves)}
    with pytest.raises(checkpoints.CheckpointMismatchError, match="quantize_params"):
        checkpoints.load_mt5(flat, shapes)
