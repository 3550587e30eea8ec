"""The decoder-only PaliGemma network: configs, parameter layout, prefix-LM attention,
training signal, cached decoding, bf16 and remat."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from palimix.errors import UsageError
from palimix.models import configs, decoding, gemma, losses, networks, paligemma, partitioning

VOCAB = 64
B, L = 4, 10  # decoder sequence: BOS + prompt, answer, padding
PREFIX = np.array([3, 5, 2, 10])  # BOS + prompt lengths (decoder_causal_attention's ones)
VALID = np.array([8, 9, 6, 10])  # non-padding lengths


def make_batch(config, seed=0):
    """A prefix-LM batch as seqio's PrefixLMFeatureConverter lays it out; the second
    example is language-only (mask 0)."""
    rng = np.random.default_rng(seed)
    s = config.vit.image_size
    column = np.arange(L)[None]
    targets = np.where(column < VALID[:, None], rng.integers(2, VOCAB, (B, L)), 0).astype(np.int32)
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    return dict(
        encoder_images=jnp.asarray(rng.uniform(-1, 1, (B, s, s, 3)), jnp.float32),
        encoder_image_mask=jnp.asarray([1, 0, 1, 1], jnp.int32),
        decoder_input_tokens=jnp.asarray(inputs),
        decoder_target_tokens=jnp.asarray(targets),
        decoder_causal_attention=jnp.asarray((column < PREFIX[:, None]).astype(np.int32)),
    )


def answer_weights(batch):
    """Loss on the answer (and EOS) only, as the decoder-only feature converter weighs it."""
    return (batch["decoder_target_tokens"] > 0) & (batch["decoder_causal_attention"] == 0)


@functools.lru_cache(maxsize=None)
def network(**overrides):
    config = configs.get("tiny_decoder", vocab_size=VOCAB, **overrides)
    return paligemma.PaliGemma(config), networks.init_variables(config, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def logits_fn(model):
    return jax.jit(lambda params, batch: model.apply({"params": params}, **batch, enable_dropout=False))


def logits_of(batch, **overrides):
    model, variables = network(**overrides)
    return np.asarray(logits_fn(model)(variables["params"], batch))


# --- configs --------------------------------------------------------------------------


def test_named_decoder_configs():
    tiny = configs.get("tiny_decoder")
    assert isinstance(tiny, configs.PaliGemmaConfig) and tiny.num_image_tokens == 16
    assert tiny.llm.num_kv_heads < tiny.llm.num_heads and tiny.vocab_size == configs.PALIMIX_DEMO_VOCAB_SIZE
    big = configs.get("paligemma_3b")
    assert (big.vit.width, big.vit.patch_size, big.num_image_tokens) == (1152, 14, 256)
    assert (big.llm.width, big.llm.depth, big.llm.mlp_dim, big.llm.num_heads, big.llm.num_kv_heads,
            big.llm.head_dim, big.llm.vocab_size) == (2048, 18, 16384, 8, 1, 256, 256000 + 1024 + 128)


def test_decoder_config_overrides():
    cfg = configs.get("tiny_decoder", vit_num_heads=2, llm_num_heads=8, num_kv_heads=1, image_size=32,
                      llm="gemma_2b", llm_depth=1, remat="dots")
    assert (cfg.vit.num_heads, cfg.llm.num_heads, cfg.llm.num_kv_heads, cfg.vit.image_size) == (2, 8, 1, 32)
    assert (cfg.llm.width, cfg.llm.depth, cfg.remat) == (2048, 1, "dots")
    with pytest.raises(UsageError, match="vit_num_heads= or llm_num_heads="):
        configs.get("tiny_decoder", num_heads=2)
    with pytest.raises(UsageError, match="Unknown model config override 'text_dropout_rate'"):
        configs.get("tiny_decoder", text_dropout_rate=0.1)
    with pytest.raises(UsageError, match="multiple of num_kv_heads"):
        configs.get("tiny_decoder", num_kv_heads=3)


@pytest.mark.parametrize("name", ["tiny", "tiny_decoder", "paligemma_3b"])
def test_configs_round_trip_through_json(name):
    config = configs.get(name, dtype="bfloat16")
    recorded = json.loads(json.dumps(configs.to_dict(config)))
    assert recorded["family"] == configs.MODELS[name]["family"]
    assert configs.from_dict(recorded) == config


def test_a_record_without_family_is_a_pali_config():
    recorded = configs.to_dict(configs.get("tiny"))
    del recorded["family"]
    assert configs.from_dict(recorded) == configs.get("tiny")


def test_paligemma_3b_parameter_count_matches_the_report():
    counts = networks.count_params("paligemma_3b")
    assert abs(counts["total"] / configs.PALIGEMMA_PARAMS["paligemma_3b"] - 1) < 0.03
    assert counts["img_proj"] == 1152 * 2048 + 2048  # img/head
    assert counts["total"] == counts["vit"] + counts["img_proj"] + counts["text"]


# --- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("num_kv_heads, attention", [(2, {"q_einsum/w": (4, 64, 16), "kv_einsum/w": (2, 2, 64, 16)}),
                                                      (4, {"qkv_einsum/w": (3, 4, 64, 16)})])
def test_parameters_have_big_vision_names_shapes_and_axes(num_kv_heads, attention):
    _, variables = network(num_kv_heads=num_kv_heads)
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items()}
    layer = {k[len("llm/layers_1/"):]: v for k, v in shapes.items() if k.startswith("llm/layers_1/")}
    assert layer == {**{f"attn/{k}": v for k, v in attention.items()}, "attn/attn_vec_einsum/w": (4, 16, 64),
                     "mlp/gating_einsum": (2, 64, 128), "mlp/linear": (128, 64),
                     "pre_attention_norm/scale": (64,), "pre_ffw_norm/scale": (64,)}
    assert shapes["llm/embedder/input_embedding"] == (VOCAB, 64) and shapes["llm/final_norm/scale"] == (64,)
    assert shapes["img/head/kernel"] == (64, 64) and shapes["img/head/bias"] == (64,)
    assert "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in shapes
    # Every parameter has logical axis names, and every name has a sharding rule.
    specs = traverse_util.flatten_dict(partitioning.logical_specs(variables["params_axes"]), sep="/")
    assert {k.replace("_axes", "") for k in specs} == set(shapes)
    known = {name for name, _ in partitioning.DEFAULT_RULES}
    assert {axis for spec in specs.values() for axis in spec} <= known


# --- the math ---------------------------------------------------------------------------


def test_rotary_attention_depends_on_relative_positions_only():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32) for _ in range(2))

    def score(q_position, k_position):
        rq = gemma.rotary_embedding(q, jnp.full((1, 1), q_position), 10_000.0)
        rk = gemma.rotary_embedding(k, jnp.full((1, 1), k_position), 10_000.0)
        return jnp.sum(rq * rk, axis=-1)

    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    assert not np.allclose(score(7, 3), score(7, 5))
    np.testing.assert_allclose(gemma.rotary_embedding(q, jnp.zeros((1, 1)), 10_000.0), q)


def test_norms_start_as_plain_rms_normalisation():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)) * 5, jnp.float32)
    norm = gemma.GemmaRMSNorm()
    variables = norm.init(jax.random.PRNGKey(0), x)
    y = norm.apply(variables, x)
    np.testing.assert_allclose(jnp.mean(jnp.square(y), axis=-1), 1.0, rtol=1e-4)  # 1 + scale, scale = 0
    doubled = norm.apply(jax.tree_util.tree_map(lambda s: s + 1.0, variables), x)
    np.testing.assert_allclose(doubled, 2 * y, rtol=1e-5)


def test_logits_shape_and_dtype():
    logits = logits_of(make_batch(configs.get("tiny_decoder")))
    assert logits.shape == (B, L, VOCAB) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_prefix_lm_mask_matches_seqio_layout():
    prefix = jnp.asarray([[1, 1, 1, 0, 0]], bool)
    valid = jnp.asarray([[1, 1, 1, 1, 0]], bool)
    mask = np.asarray(paligemma.prefix_lm_mask(prefix, valid))[0, 0].astype(int)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])


def _changed(batch, feature, row, column, value):
    out = dict(batch)
    out[feature] = batch[feature].at[row, column].set(value)
    return out


def test_answer_tokens_do_not_reach_the_prefix():
    batch = make_batch(configs.get("tiny_decoder"))
    row, first_answer = 1, PREFIX[1]  # an answer input token
    before = logits_of(batch)
    after = logits_of(_changed(batch, "decoder_input_tokens", row, first_answer + 1, 7))
    np.testing.assert_allclose(after[row, : first_answer + 1], before[row, : first_answer + 1], atol=1e-6)
    assert not np.allclose(after[row, first_answer + 1], before[row, first_answer + 1])
    np.testing.assert_array_equal(np.delete(after, row, 0), np.delete(before, row, 0))


def test_a_prompt_token_reaches_every_position():
    batch = make_batch(configs.get("tiny_decoder"))
    row = 1
    before = logits_of(batch)
    after = logits_of(_changed(batch, "decoder_input_tokens", row, PREFIX[row] - 1, 7))
    # The prefix attends both ways: even the positions before the changed one see it.
    changed = np.abs(after[row, : VALID[row]] - before[row, : VALID[row]]).max(axis=-1)
    assert (changed > 1e-5).all(), changed


def test_padding_is_masked():
    batch = make_batch(configs.get("tiny_decoder"))
    row = 0  # padding after VALID[0]
    before = logits_of(batch)
    after = logits_of(_changed(batch, "decoder_input_tokens", row, VALID[row] + 1, 9))
    np.testing.assert_allclose(after[row, : VALID[row]], before[row, : VALID[row]], atol=1e-6)


def test_blank_image_tokens_do_not_matter_when_masked():
    batch = make_batch(configs.get("tiny_decoder"))
    before = logits_of(batch)
    other_images = batch["encoder_images"][::-1]
    after = logits_of(dict(batch, encoder_images=other_images))
    np.testing.assert_allclose(after[1, : VALID[1]], before[1, : VALID[1]], atol=1e-5)  # mask 0: ignored
    assert not np.allclose(after[0], before[0], atol=1e-3)  # mask 1: image read


def test_loss_decreases_with_sgd():
    model, variables = network()
    batch = make_batch(model.config)
    weights = answer_weights(batch)

    def loss(params):
        logits = model.apply({"params": params}, **batch, enable_dropout=False)
        return losses.cross_entropy(logits, batch["decoder_target_tokens"], weights).mean

    loss_and_grads = jax.jit(jax.value_and_grad(loss))
    params, (first, _) = variables["params"], loss_and_grads(variables["params"])
    for _ in range(5):
        value, grads = loss_and_grads(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    assert float(loss_and_grads(params)[0]) < 0.8 * float(first)


def test_remat_and_bfloat16_keep_the_math():
    batch = make_batch(configs.get("tiny_decoder"))
    model, variables = network()
    reference = logits_of(batch)
    np.testing.assert_allclose(logits_of(batch, remat="full"), reference, atol=1e-5)
    remat_model = paligemma.PaliGemma(configs.get("tiny_decoder", vocab_size=VOCAB, remat="dots"))

    def loss(model, params):
        logits = model.apply({"params": params}, **batch, enable_dropout=False)
        return losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean

    grads = jax.jit(jax.grad(functools.partial(loss, model)))(variables["params"])
    remat_grads = jax.jit(jax.grad(functools.partial(loss, remat_model)))(variables["params"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, remat_grads)
    bf16 = paligemma.PaliGemma(configs.get("tiny_decoder", vocab_size=VOCAB, dtype="bfloat16"))
    bf16_logits = np.asarray(logits_fn(bf16)(variables["params"], batch))
    assert bf16_logits.dtype == np.float32
    assert np.abs(bf16_logits - reference).max() < 0.05 * np.abs(reference).max()


def test_dropout_changes_training_logits_only():
    model, variables = network(llm_dropout_rate=0.3)
    batch = make_batch(model.config)
    apply = functools.partial(model.apply, {"params": variables["params"]}, **batch)
    train = apply(enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_allclose(apply(enable_dropout=False), logits_of(batch, llm_dropout_rate=0.3), atol=1e-5)
    assert not np.allclose(train, logits_of(batch, llm_dropout_rate=0.3))


def test_networks_helpers_build_the_decoder():
    config = configs.get("tiny_decoder", vocab_size=VOCAB)
    model = networks.build(config)
    batch = networks.dummy_batch(config, 2, {"inputs": 3, "targets": 5})
    assert batch["decoder_input_tokens"].shape == (2, 8) and int(batch["decoder_causal_attention"][0].sum()) == 4
    _, variables = network()
    logits = model.apply({"params": variables["params"]}, *networks.inputs(model, batch), enable_dropout=False)
    assert logits.shape == (2, 8, VOCAB)
    with pytest.raises(ValueError, match="cannot be packed"):
        model.apply({"params": variables["params"]}, *networks.inputs(model, batch),
                    decoder_segment_ids=batch["decoder_input_tokens"])


# --- decoding ---------------------------------------------------------------------------


def prompt_of(batch):
    """The PREDICT_INPUTS with the answers removed (as at inference)."""
    prompt = {k: batch[k] for k in paligemma.PaliGemma.PREDICT_INPUTS}
    return dict(prompt, decoder_input_tokens=prompt["decoder_input_tokens"] * prompt["decoder_causal_attention"])


@pytest.mark.parametrize("num_kv_heads", [2, 4])
def test_cached_steps_give_the_teacher_forced_logits(num_kv_heads):
    model, variables = network(num_kv_heads=num_kv_heads)
    batch = make_batch(model.config)
    params = variables["params"]
    expected = logits_of(batch, num_kv_heads=num_kv_heads)
    cache_length = model.config.num_image_tokens + 2 * L
    prefill = jax.jit(lambda prompt: model.apply({"params": params}, **prompt, cache_length=cache_length,
                                                 mutable=["cache"], method=model.prefill))
    logits, state = prefill(prompt_of(batch))
    rows = np.arange(B)
    np.testing.assert_allclose(logits, expected[rows, PREFIX - 1], atol=1e-4)
    step = jax.jit(lambda cache, tokens: model.apply({"params": params, "cache": cache}, tokens, mutable=["cache"],
                                                     method=model.decode_step))
    cache = state["cache"]
    for i in range(3):  # feed each example's own answer tokens, one per step
        position = np.minimum(PREFIX + i, L - 1)  # the last example has no answer: padding
        logits, state = step(cache, batch["decoder_input_tokens"][rows, position])
        cache = state["cache"]
        valid = PREFIX + i < VALID
        assert valid.sum() >= 2
        np.testing.assert_allclose(np.asarray(logits)[valid], expected[rows, position][valid], atol=1e-4)


@functools.lru_cache(maxsize=None)
def generate_fn(model, **kwargs):
    return jax.jit(functools.partial(decoding.generate, model, max_decode_length=6, **kwargs))


def test_cached_greedy_equals_the_uncached_argmax_loop():
    model, variables = network()
    prompt = prompt_of(make_batch(model.config, seed=3))
    cached, cached_scores = generate_fn(model, eos_id=None)(variables["params"], prompt)
    uncached, uncached_scores = generate_fn(model, eos_id=None, use_cache=False)(variables["params"], prompt)
    assert cached.shape == (B, 6)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_allclose(cached_scores, uncached_scores, rtol=1e-4)


def test_beam_search_and_sampling_run():
    model, variables = network()
    prompt = prompt_of(make_batch(model.config))
    greedy, greedy_scores = generate_fn(model, eos_id=None)(variables["params"], prompt)
    beams, beam_scores = generate_fn(model, method="beam", num_beams=3, eos_id=None, length_penalty=0.0)(
        variables["params"], prompt)
    assert beams.shape == (B, 6)
    assert (np.asarray(beam_scores) >= np.asarray(greedy_scores) - 1e-4).all()  # beam finds at least greedy's
    sample = generate_fn(model, method="sample", temperature=1.0, eos_id=1)
    tokens, _ = sample(variables["params"], prompt, rng=jax.random.PRNGKey(0))
    again, _ = sample(variables["params"], prompt, rng=jax.random.PRNGKey(0))
    assert tokens.shape == (B, 6) and ((0 <= tokens) & (tokens < VOCAB)).all()
    np.testing.assert_array_equal(tokens, again)
    with pytest.raises(UsageError, match="Beam search always decodes with the cache"):
        decoding.generate(model, variables["params"], prompt, max_decode_length=6, method="beam", use_cache=False)
