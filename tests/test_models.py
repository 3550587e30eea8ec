"""The PaLI model: configs, shapes, masks, training signal, determinism, decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from palimix.errors import UnknownNameError, UsageError
from palimix.models import configs, decoding, losses, networks, pali

VOCAB = 128
B, L, T = 4, 8, 8


def make_batch(config, seed=0, batch_size=B):
    rng = np.random.default_rng(seed)
    s = config.vit.image_size
    targets = rng.integers(2, VOCAB, (batch_size, T)).astype(np.int32)
    targets[:, -2:] = 0  # padding
    targets[:, -3] = 1  # EOS
    inputs = rng.integers(2, VOCAB, (batch_size, L)).astype(np.int32)
    inputs[0, 5:] = 0
    return dict(
        encoder_images=jnp.asarray(rng.uniform(-1, 1, (batch_size, s, s, 3)), jnp.float32),
        encoder_image_mask=jnp.asarray([1, 0] * (batch_size // 2), jnp.int32),
        encoder_input_tokens=jnp.asarray(inputs),
        decoder_input_tokens=pali.shift_right(jnp.asarray(targets)),
        decoder_target_tokens=jnp.asarray(targets),
    )


@pytest.fixture(scope="module")
def tiny():
    config = configs.get("tiny", vocab_size=VOCAB)
    variables = networks.init_variables(config, jax.random.PRNGKey(0))
    return config, pali.Pali(config), variables["params"], variables["params_axes"]


def loss_fn(model, params, batch, rng=None):
    logits = model.apply({"params": params}, **batch, enable_dropout=rng is not None,
                         rngs={"dropout": rng} if rng is not None else None)
    return losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean


# Compiling dominates these tests on CPU: one jitted function per model and use.
_JITTED = {}


def jitted(model, what, **kwargs):
    key = (model.config, what, tuple(sorted(kwargs.items())))
    if key not in _JITTED:
        _JITTED[key] = _make_jitted(model, what, **kwargs)
    return _JITTED[key]


def _make_jitted(model, what, **kwargs):
    if what == "logits":
        return jax.jit(lambda params, batch: model.apply({"params": params}, **batch, enable_dropout=False))
    if what == "loss_and_grads":
        return jax.jit(jax.value_and_grad(functools.partial(loss_fn, model)))
    if what == "loss":
        return jax.jit(functools.partial(loss_fn, model))
    if what == "generate":
        return jax.jit(functools.partial(decoding.generate, model, max_decode_length=T, **kwargs))
    raise ValueError(what)


def prompt_of(batch):
    return {k: batch[k] for k in ("encoder_images", "encoder_image_mask", "encoder_input_tokens")}


# --- configs --------------------------------------------------------------------------


def test_named_configs_and_overrides():
    tiny = configs.get("tiny")
    assert tiny.num_image_tokens == 16 and tiny.text.num_encoder_layers == 2 and tiny.vit.depth == 2
    cfg = configs.get("pali_3b", vocab_size=32128, image_size=448, dtype="bfloat16", remat="dots")
    assert (cfg.text.vocab_size, cfg.vit.image_size, cfg.vit.patch_size) == (32128, 448, 14)
    assert cfg.num_image_tokens == 32 * 32 and cfg.vit.width == 1664 and cfg.text.emb_dim == 1024
    cfg = configs.get("small", vit="So400m/14", text="mt5_base", patch_size=14, vit_num_heads=8, text_dropout_rate=0.1)
    assert (cfg.vit.width, cfg.vit.num_heads, cfg.text.emb_dim, cfg.text.dropout_rate) == (1152, 8, 768, 0.1)
    assert configs.get("tiny", image_pooling="mean").num_image_tokens == 1
    assert configs.get("tiny", max_image_tokens=4).num_image_tokens == 4
    assert configs.round_vocab_size(8292) == 8320


@pytest.mark.parametrize(
    "name, overrides, error, message",
    [
        ("tinny", {}, UnknownNameError, "Did you mean: tiny"),
        ("tiny", {"num_heads": 2}, UsageError, "vit_num_heads= or text_num_heads="),
        ("tiny", {"vocab_sise": 5}, UsageError, "Did you mean: vocab_size"),
        ("tiny", {"image_size": 60}, UsageError, "not a multiple of patch_size"),
        ("tiny", {"vit": "Q/16"}, UnknownNameError, "Unknown ViT variant"),
        ("tiny", {"remat": "some"}, UsageError, "remat"),
    ],
)
def test_bad_configs_say_what_is_wrong(name, overrides, error, message):
    with pytest.raises(error, match=message):
        configs.get(name, **overrides)


@pytest.mark.parametrize("name", ["pali_3b", "pali_15b", "pali_17b"])
def test_param_counts_match_the_paper(name):
    counts = networks.count_params(name)
    assert abs(counts["total"] / configs.PAPER_PARAMS[name] - 1) < 0.03
    assert counts["total"] == counts["vit"] + counts["img_proj"] + counts["text"]


# --- parameters -------------------------------------------------------------------------


def test_parameter_names_and_logical_axes(tiny):
    config, _, params, params_axes = tiny
    names = _names(params)
    for expected in [
        "img/embedding/kernel", "img/pos_embedding", "img/Transformer/encoder_norm/scale",
        "img/Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel",
        "img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/bias", "img_proj/kernel",
        "token_embedder/embedding", "encoder/relpos_bias/rel_embedding", "encoder/encoder_norm/scale",
        "encoder/layers_1/attention/out/kernel", "encoder/layers_0/pre_attention_layer_norm/scale",
        "encoder/layers_0/mlp/wi_0/kernel", "encoder/layers_0/mlp/wi_1/kernel", "encoder/layers_0/mlp/wo/kernel",
        "decoder/layers_1/self_attention/query/kernel", "decoder/layers_1/encoder_decoder_attention/value/kernel",
        "decoder/layers_0/pre_self_attention_layer_norm/scale", "decoder/layers_0/pre_cross_attention_layer_norm/scale",
        "decoder/layers_0/pre_mlp_layer_norm/scale", "decoder/relpos_bias/rel_embedding",
        "decoder/decoder_norm/scale", "decoder/logits_dense/kernel",
    ]:
        assert expected in names, expected
    assert params["img"]["embedding"]["kernel"].shape == (16, 16, 3, 64)
    assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (64, 4 * 16)
    from palimix.models import partitioning

    specs = partitioning.logical_specs(params_axes)
    assert tuple(specs["img_proj"]["kernel"]) == ("vit_embed", "embed")
    assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
    # Every parameter has axis names, one per dimension.
    flat_specs = dict(_items(specs))
    for name, value in _items(params):
        assert len(flat_specs[name]) == value.ndim, name
        rules = dict(partitioning.DEFAULT_RULES)
        assert all(axis in rules for axis in flat_specs[name]), (name, flat_specs[name])


def _items(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _items(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def _names(tree):
    return {n for n, _ in _items(tree)}


def test_same_seed_same_parameters_and_outputs(tiny):
    config, model, params, _ = tiny
    again = networks.init_params(config, jax.random.PRNGKey(0))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)))
    other = networks.init_params(config, jax.random.PRNGKey(1))
    assert not np.array_equal(other["img_proj"]["kernel"], params["img_proj"]["kernel"])
    batch = make_batch(config)
    a, b = (jitted(model, "logits")(params, batch) for _ in range(2))
    np.testing.assert_array_equal(a, b)


# --- forward pass ---------------------------------------------------------------------------


def test_shapes_and_blank_images_are_masked_out(tiny):
    config, model, params, _ = tiny
    batch = make_batch(config)
    apply = functools.partial(jitted(model, "logits"), params)
    logits = apply(batch)
    assert logits.shape == (B, T, VOCAB) and logits.dtype == jnp.float32
    encoded = jax.eval_shape(lambda: model.apply(
        {"params": params}, batch["encoder_images"], batch["encoder_image_mask"], batch["encoder_input_tokens"],
        enable_dropout=False, method=model.encode))
    assert encoded.shape == (B, config.num_image_tokens + L, config.text.emb_dim)
    # New pixels change only the examples whose image is real (mask 1: examples 0 and 2).
    other = dict(batch, encoder_images=-batch["encoder_images"])
    changed = np.abs(np.asarray(apply(other) - logits)).max(axis=(1, 2))
    assert changed[0] > 1e-3 and changed[2] > 1e-3
    assert changed[1] < 1e-5 and changed[3] < 1e-5
    # Text only (no ViT at all) equals masking every image out.
    masked = apply(dict(batch, encoder_image_mask=jnp.zeros((B,), jnp.int32)))
    text_only = jax.jit(lambda p, b: model.apply(
        {"params": p}, None, None, b["encoder_input_tokens"], b["decoder_input_tokens"], b["decoder_target_tokens"],
        enable_dropout=False))(params, batch)
    np.testing.assert_allclose(text_only, masked, atol=1e-4)


def test_packed_inputs_are_refused(tiny):
    config, model, params, _ = tiny
    batch = make_batch(config)
    with pytest.raises(ValueError, match="cannot be packed"):
        jax.eval_shape(lambda: model.apply({"params": params}, **batch, encoder_segment_ids=jnp.ones((B, L), jnp.int32)))


def test_fusion_options(tiny):
    _, _, params, _ = tiny  # pooling changes no parameter shapes
    config = configs.get("tiny", vocab_size=VOCAB, image_pooling="mean")
    model = pali.Pali(config)
    batch = make_batch(config)
    encoded = jax.eval_shape(lambda: model.apply(
        {"params": params}, batch["encoder_images"], batch["encoder_image_mask"], batch["encoder_input_tokens"],
        enable_dropout=False, method=model.encode))
    assert encoded.shape[1] == 1 + L
    assert configs.get("tiny", max_image_tokens=4).num_image_tokens == 4


def test_remat_and_bfloat16_keep_the_math(tiny):
    config, model, params, _ = tiny
    batch = make_batch(config)
    loss = jitted(model, "loss")(params, batch)
    remat = pali.Pali(configs.get("tiny", vocab_size=VOCAB, remat="full"))
    loss_r, grads_r = jitted(remat, "loss_and_grads")(params, batch)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5)
    assert np.isfinite(float(jnp.abs(grads_r["img"]["embedding"]["kernel"]).max()))
    bf16 = pali.Pali(configs.get("tiny", vocab_size=VOCAB, dtype="bfloat16"))
    logits = jitted(bf16, "logits")(params, batch)
    assert logits.dtype == jnp.float32  # logits stay float32 for the loss
    np.testing.assert_allclose(losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean, loss, rtol=0.05)


def test_dropout_uses_the_rng(tiny):
    _, _, params, _ = tiny
    config = configs.get("tiny", vocab_size=VOCAB, text_dropout_rate=0.3)
    model = pali.Pali(config)
    batch = make_batch(config)
    loss = jax.jit(functools.partial(loss_fn, model))
    a, b, c = (loss(params, batch, jax.random.PRNGKey(s)) for s in (1, 1, 2))
    assert a == b and a != c


# --- training and decoding -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny):
    """The tiny model overfitted on one batch (also the 'loss goes down' check)."""
    config, model, params, _ = tiny
    batch = make_batch(config, seed=3)
    optimizer = optax.adam(3e-3)
    loss_and_grads = jitted(model, "loss_and_grads")

    @jax.jit
    def step(params, state):
        loss, grads = loss_and_grads(params, batch)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state, losses = optimizer.init(params), []
    for _ in range(150):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, batch, losses


def test_loss_goes_down(trained):
    _, _, losses = trained
    assert losses[-1] < 0.1 * losses[0], losses[::15]


def test_greedy_and_beam_reproduce_what_was_learned(tiny, trained):
    _, model, _, _ = tiny
    params, batch, _ = trained
    targets = np.asarray(batch["decoder_target_tokens"])
    tokens, scores = jitted(model, "generate")(params, prompt_of(batch))
    np.testing.assert_array_equal(tokens, targets)
    assert np.all(np.asarray(scores) > -1.0)
    tokens, _ = jitted(model, "generate", method="beam", num_beams=3)(params, prompt_of(batch))
    np.testing.assert_array_equal(tokens, targets)


def test_cached_decoding_equals_uncached(tiny):
    config, model, params, _ = tiny
    prompt = prompt_of(make_batch(config, seed=5))
    cached, cached_scores = jitted(model, "generate")(params, prompt)
    uncached, uncached_scores = jitted(model, "generate", use_cache=False)(params, prompt)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_allclose(cached_scores, uncached_scores, rtol=1e-4)
    assert np.count_nonzero(np.asarray(cached)) > B  # decoded something, not only EOS


def test_prepare_then_generate_from_equals_generate(tiny):
    config, model, params, _ = tiny
    prompt = prompt_of(make_batch(config, seed=5))
    prepared = jax.jit(functools.partial(decoding.prepare, model, max_decode_length=T))(params, prompt)
    # The cache holds keys/values positions-last, [B, heads, head_dim, positions]: the
    # layout the per-step attention reads without transposing it.
    layer = prepared.cache["decoder"]["layers_0"]
    text = config.text
    assert layer["self_attention"]["cached_key"].shape == (B, text.num_heads, text.head_dim, T)
    assert layer["encoder_decoder_attention"]["cached_value"].shape == (
        B, text.num_heads, text.head_dim, config.num_image_tokens + L)
    tokens, scores = jax.jit(functools.partial(decoding.generate_from, model))(params, prepared)
    expected_tokens, expected_scores = jitted(model, "generate")(params, prompt)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    with pytest.raises(UsageError, match="num_beams"):
        decoding.generate_from(model, params, prepared, method="beam")


def test_sampling(tiny):
    config, model, params, _ = tiny
    prompt = prompt_of(make_batch(config, seed=6))
    greedy, _ = jitted(model, "generate")(params, prompt)
    sample = jitted(model, "generate", method="sample", top_k=1, temperature=5.0)
    # top_k=1 sampling is greedy whatever the temperature; same rng, same tokens.
    first, again = (sample(params, prompt, rng=jax.random.PRNGKey(0))[0] for _ in range(2))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, greedy)
    with pytest.raises(UsageError, match="rng"):
        decoding.generate(model, params, prompt, max_decode_length=T, method="sample")
    with pytest.raises(UsageError, match="Unknown decoding method"):
        decoding.generate(model, params, prompt, max_decode_length=T, method="nucleus")


def test_relative_position_buckets_match_t5x():
    network_layers = pytest.importorskip("t5x.examples.t5.layers")
    from palimix.models.layers import relative_position_buckets

    positions = np.arange(300)
    rel = positions[None, :] - positions[:, None]
    for bidirectional in (True, False):
        ours = relative_position_buckets(positions, positions, bidirectional=bidirectional, num_buckets=32,
                                         max_distance=128)
        theirs = network_layers.RelativePositionBiases._relative_position_bucket(
            rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        np.testing.assert_array_equal(ours, theirs)


def test_wide_output_matmul_has_the_gradients_of_a_plain_product():
    from palimix.models import layers

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)

    def loss(matmul):
        return lambda x, kernel: jnp.sum(jnp.tanh(matmul(x, kernel)) * weights)

    plain = lambda x, kernel: jnp.einsum("bte,ev->btv", x, kernel)  # noqa: E731
    ours = jax.jit(jax.value_and_grad(loss(layers.wide_output_matmul), argnums=(0, 1)))(x, kernel)
    expected = jax.value_and_grad(loss(plain), argnums=(0, 1))(x, kernel)
    for got, want in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Dense layers that widen their input use it; the others multiply as before.
    assert layers._widens((1,), 2, (8,), (40,))
    assert not layers._widens((1,), 2, (8,), (8,)) and not layers._widens((1, 2), 3, (4, 2), (40,))
