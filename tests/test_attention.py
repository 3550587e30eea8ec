"""`layers.dot_product_attention`: jax.nn.dot_product_attention (the fused path) gives
what the explicit softmax path and a float64 numpy reference give, with bias, masks,
multi-query / grouped-query heads, and in cached decoding of both networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palimix.models import configs, decoding, layers, networks, pali, paligemma

B, T, S, HEADS, D = 2, 6, 10, 4, 8
# float32 agrees to rounding; bfloat16 inputs and outputs (float32 softmax) to a few ulps.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def reference(q, k, v, bias=None, mask=None):
    """softmax(q k^T + bias) v in float64, masked keys excluded (a row with none left: uniform)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    k, v = (np.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def inputs(kv_heads, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, HEADS, D))
    k, v = rng.normal(size=(2, B, S, kv_heads, D))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def key_padding_mask():
    """[B, 1, 1, S]: the second example's last 4 keys are padding."""
    return jnp.asarray(np.arange(S)[None, None, None] < np.array([S, S - 4])[:, None, None, None])


def cases():
    rng = np.random.default_rng(1)
    relpos = jnp.asarray(rng.normal(size=(1, HEADS, T, S)), jnp.float32)  # T5's per-head bias
    causal = jnp.asarray(np.tril(np.ones((T, S), bool), k=S - T)[None, None])
    return {
        "plain": dict(kv_heads=HEADS),
        "bias": dict(kv_heads=HEADS, bias=relpos),
        "bias_and_mask": dict(kv_heads=HEADS, bias=relpos, mask=key_padding_mask()),
        "mask_as_bias": dict(kv_heads=HEADS, bias=layers.mask_to_bias(key_padding_mask(), jnp.float32)),
        "multi_query": dict(kv_heads=1, mask=key_padding_mask()),
        "grouped_query_causal": dict(kv_heads=2, mask=causal & key_padding_mask()),
        "grouped_query_bias": dict(kv_heads=2, bias=relpos, mask=causal),
    }


def to_cache_layout(x):
    """[B, S, heads, d] -> [B, heads, d, S] (the decoding caches' layout)."""
    return jnp.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(cases()))
def test_fused_and_explicit_paths_give_the_reference(case, dtype):
    spec = dict(cases()[case])
    q, k, v = inputs(spec.pop("kv_heads"), dtype)
    bias, mask = spec.get("bias"), spec.get("mask")
    if bias is not None:
        bias = bias.astype(dtype)
    expected = reference(q, k, v, bias, mask)
    fused = jax.jit(lambda *a: layers.dot_product_attention(*a, dtype=dtype))(q, k, v, bias, mask)
    # The cache layout takes the explicit path (einsum, softmax, einsum).
    explicit = jax.jit(lambda *a: layers.dot_product_attention(*a, dtype=dtype, kv_layout="bhdk"))(
        q, to_cache_layout(k), to_cache_layout(v), bias, mask)
    assert fused.shape == explicit.shape == (B, T, HEADS, D) and fused.dtype == explicit.dtype == dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(fused, np.float64), expected, atol=tol, rtol=tol)
    np.testing.assert_allclose(np.asarray(explicit, np.float64), expected, atol=tol, rtol=tol)
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(explicit, np.float32), atol=tol, rtol=tol)


def test_a_query_with_no_key_left_gets_a_uniform_row_in_both_paths():
    q, k, v = inputs(HEADS, jnp.float32)
    mask = jnp.zeros((B, 1, T, S), bool).at[:, :, 1:].set(True)  # query 0 sees nothing
    fused = layers.dot_product_attention(q, k, v, mask=mask)
    explicit = layers.dot_product_attention(q, to_cache_layout(k), to_cache_layout(v), mask=mask, kv_layout="bhdk")
    uniform = np.broadcast_to(np.asarray(v).mean(axis=1), (B, HEADS, D))
    np.testing.assert_allclose(fused[:, 0], uniform, atol=1e-5)
    np.testing.assert_allclose(explicit[:, 0], uniform, atol=1e-5)
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_attention_dropout_keeps_the_explicit_path():
    """jax.nn.dot_product_attention has no dropout: with it active, the explicit path
    drops whole keys (one mask per key, shared by every query, as T5 does)."""
    q, k, v = inputs(HEADS, jnp.float32)
    rng = jax.random.PRNGKey(3)
    plain = layers.dot_product_attention(q, k, v)
    off = layers.dot_product_attention(q, k, v, dropout_rng=rng, dropout_rate=0.5, deterministic=True)
    dropped = layers.dot_product_attention(q, k, v, dropout_rng=rng, dropout_rate=0.5, deterministic=False)
    np.testing.assert_array_equal(off, plain)
    assert not np.allclose(dropped, plain)
    # Rebuild it: the same keep mask [B, heads, 1, S] applied to the softmax weights.
    keep = np.asarray(jax.random.bernoulli(rng, 0.5, (B, HEADS, 1, 1, S)))[:, :, 0]  # [B, heads, 1, S]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True) * keep / 0.5
    np.testing.assert_allclose(dropped, np.einsum("bhqk,bkhd->bqhd", weights, v), atol=1e-5)


def test_the_implementation_can_be_forced(monkeypatch):
    q, k, v = inputs(2, jnp.float32)
    auto = layers.dot_product_attention(q, k, v, mask=key_padding_mask())
    monkeypatch.setenv(layers.ATTENTION_ENV, "xla")
    np.testing.assert_array_equal(layers.dot_product_attention(q, k, v, mask=key_padding_mask()), auto)
    monkeypatch.setenv(layers.ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match="PALIMIX_ATTENTION='flash'"):
        layers.dot_product_attention(q, k, v)


def test_bad_bias_and_mask_shapes_are_refused():
    q, k, v = inputs(HEADS, jnp.float32)
    with pytest.raises(ValueError, match="4-D"):
        layers.dot_product_attention(q, k, v, jnp.zeros((T, S)))
    with pytest.raises(ValueError, match="boolean"):
        layers.dot_product_attention(q, k, v, mask=jnp.ones((B, 1, 1, S), jnp.int32))


# --- whole networks in bfloat16: teacher-forced (fused) vs cached steps (explicit) ------

VOCAB, L, STEPS = 64, 6, 4
BF16_LOGITS_ATOL = 0.1  # logits of order 1-5 through 2 bf16 layers each side


@pytest.mark.slow
def test_pali_cached_decoding_steps_match_teacher_forcing_in_bfloat16():
    config = configs.get("tiny", vocab_size=VOCAB, dtype="bfloat16")
    model, params = pali.Pali(config), networks.init_params(config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    s = config.vit.image_size
    prompt = dict(encoder_images=jnp.asarray(rng.uniform(-1, 1, (B, s, s, 3)), jnp.float32),
                  encoder_image_mask=jnp.asarray([1, 0], jnp.int32),
                  encoder_input_tokens=jnp.asarray(rng.integers(2, VOCAB, (B, L)), jnp.int32))
    targets = jnp.asarray(rng.integers(2, VOCAB, (B, STEPS)), jnp.int32)
    inputs_ = pali.shift_right(targets)
    expected = jax.jit(lambda prompt: model.apply({"params": params}, **prompt, decoder_input_tokens=inputs_,
                                                  decoder_target_tokens=targets, enable_dropout=False))(prompt)
    prepared = jax.jit(lambda prompt: decoding.prepare(model, params, prompt, max_decode_length=STEPS))(prompt)
    step = jax.jit(lambda cache, token: model.apply(
        {"params": params, "cache": cache}, prepared.encoded, prepared.image_mask, prepared.input_tokens,
        token, token, enable_dropout=False, decode=True, max_decode_length=STEPS, mutable=["cache"],
        method=model.decode))
    cache = prepared.cache
    for i in range(STEPS):
        logits, state = step(cache, inputs_[:, i:i + 1])
        cache = state["cache"]
        np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(expected[:, i]), atol=BF16_LOGITS_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_paligemma_cached_decoding_steps_match_teacher_forcing_in_bfloat16(num_kv_heads):
    config = configs.get("tiny_decoder", vocab_size=VOCAB, dtype="bfloat16", llm_num_kv_heads=num_kv_heads)
    model, params = paligemma.PaliGemma(config), networks.init_params(config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    s, length = config.vit.image_size, L + STEPS
    tokens = rng.integers(2, VOCAB, (B, length)).astype(np.int32)
    prefix = np.arange(length)[None] < L
    batch = dict(encoder_images=jnp.asarray(rng.uniform(-1, 1, (B, s, s, 3)), jnp.float32),
                 encoder_image_mask=jnp.asarray([1, 0], jnp.int32),
                 decoder_input_tokens=jnp.asarray(np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]),
                 decoder_causal_attention=jnp.asarray(np.broadcast_to(prefix, (B, length)).astype(np.int32)))
    expected = jax.jit(lambda batch: model.apply({"params": params}, **batch, decoder_target_tokens=jnp.asarray(tokens),
                                                 enable_dropout=False))(batch)
    prompt = dict(batch, decoder_input_tokens=batch["decoder_input_tokens"] * batch["decoder_causal_attention"])
    prefill = jax.jit(lambda prompt: model.apply({"params": params}, **prompt, mutable=["cache"], method=model.prefill,
                                                 cache_length=config.num_image_tokens + length))
    logits, state = prefill(prompt)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected[:, L - 1]), atol=BF16_LOGITS_ATOL)
    step = jax.jit(lambda cache, token: model.apply({"params": params, "cache": cache}, token, mutable=["cache"],
                                                    method=model.decode_step))
    cache = state["cache"]
    for i in range(STEPS - 1):
        logits, state = step(cache, batch["decoder_input_tokens"][:, L + i])
        cache = state["cache"]
        np.testing.assert_allclose(np.asarray(logits), np.asarray(expected[:, L + i]), atol=BF16_LOGITS_ATOL)
