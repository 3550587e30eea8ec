"""Classifier-free guidance in palimix.models.decoding, for both backbones: the doubled
batch's cache, S = 1 is plain conditional decoding and S = 0 unconditional decoding (same
rng), cached equals uncached, and the guided logits' formula."""

import functools

import jax
import numpy as np
import pytest

from palimix.errors import UsageError
from palimix.models import configs, decoding, networks, pali, paligemma

VOCAB = 64
B, L, T = 3, 8, 6
S = 32  # image size (4 image tokens)


def _pali_batches(config):
    """A conditional batch and its unconditional twin: the same images, the prompt
    without its last words (the description), padded to the same length."""
    rng = np.random.default_rng(0)
    prompts = rng.integers(2, VOCAB, (B, L)).astype(np.int32)
    prompts[:, -1] = 1  # EOS
    images = rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32)
    mask = np.asarray([1, 0, 1], np.int32)
    unconditional = prompts.copy()
    unconditional[:, 2:] = 0
    unconditional[:, 2] = 1
    cond = dict(encoder_images=images, encoder_image_mask=mask, encoder_input_tokens=prompts)
    return cond, dict(cond, encoder_input_tokens=unconditional)


def _decoder_batches(config):
    """The decoder-only layout: the prompt is where decoder_causal_attention is 1."""
    rng = np.random.default_rng(1)
    column = np.arange(L)[None]
    images = rng.uniform(-1, 1, (B, S, S, 3)).astype(np.float32)
    mask = np.asarray([1, 1, 0], np.int32)

    def prompt(lengths):
        tokens = np.where(column < np.asarray(lengths)[:, None], rng.integers(2, VOCAB, (B, L)), 0).astype(np.int32)
        return dict(encoder_images=images, encoder_image_mask=mask, decoder_input_tokens=tokens,
                    decoder_causal_attention=(tokens > 0).astype(np.int32))

    cond = prompt([7, 5, 8])
    unconditional = dict(cond, decoder_input_tokens=cond["decoder_input_tokens"] * (column < 2),
                         decoder_causal_attention=cond["decoder_causal_attention"] * (column < 2))
    return cond, unconditional


BACKBONES = {"tiny": (pali.Pali, _pali_batches), "tiny_decoder": (paligemma.PaliGemma, _decoder_batches)}


@functools.lru_cache(maxsize=None)
def network(name):
    model_class, batches = BACKBONES[name]
    config = configs.get(name, vocab_size=VOCAB, image_size=S)
    params = networks.init_variables(config, jax.random.PRNGKey(0))["params"]
    return model_class(config), params, batches(config)


@functools.lru_cache(maxsize=None)
def generate_fn(model, guided, **kwargs):
    generate = functools.partial(decoding.generate, model, max_decode_length=T, eos_id=None, **kwargs)
    if guided:
        return jax.jit(lambda p, b, u, scale, rng: generate(p, b, unconditional=u, guidance_scale=scale, rng=rng))
    return jax.jit(lambda p, b, rng: generate(p, b, rng=rng))


SAMPLE = dict(method="sample", temperature=1.0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_scale_one_is_conditional_and_scale_zero_unconditional_sampling(name):
    model, params, (cond, uncond) = network(name)
    rng = jax.random.PRNGKey(7)
    guided = generate_fn(model, True, **SAMPLE)
    plain = generate_fn(model, False, **SAMPLE)
    expected, expected_scores = plain(params, cond, rng)
    tokens, scores = guided(params, cond, uncond, 1.0, rng)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    expected_uncond, _ = plain(params, uncond, rng)
    np.testing.assert_array_equal(guided(params, cond, uncond, 0.0, rng)[0], expected_uncond)
    assert not np.array_equal(expected, expected_uncond)  # the condition matters: the test tells them apart
    assert tokens.shape == (B, T)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_guided_cached_decoding_equals_uncached(name):
    model, params, (cond, uncond) = network(name)
    rng = jax.random.PRNGKey(0)
    cached, cached_scores = generate_fn(model, True, method="greedy")(params, cond, uncond, 3.0, rng)
    uncached, uncached_scores = generate_fn(model, True, method="greedy", use_cache=False)(
        params, cond, uncond, 3.0, rng)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_allclose(cached_scores, uncached_scores, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_doubled_batch_prepares_one_cache_for_both_branches(name):
    model, params, (cond, uncond) = network(name)
    batch = decoding.guidance_batch(model, cond, uncond)
    assert all(len(v) == 2 * B for v in batch.values())
    prepared = decoding.prepare(model, params, batch, max_decode_length=T)
    rows = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(prepared.cache) if leaf.ndim}
    assert rows == {2 * B}
    if name == "tiny_decoder":  # each branch continues after its own prompt
        prompt_lengths = np.asarray(batch["decoder_causal_attention"]).sum(axis=1)
        np.testing.assert_array_equal(prepared.cache["next_slot"], model.config.num_image_tokens + prompt_lengths)
    tokens, _ = decoding.generate_from(model, params, prepared, guidance_scale=2.0)
    assert tokens.shape == (B, T)


def test_guided_logits_formula():
    cond = np.array([[1.0, 2.0, -1.0]])
    uncond = np.array([[0.5, 3.0, -1.0]])
    both = np.concatenate([cond, uncond])
    for scale in (0.0, 1.0, 2.5):
        np.testing.assert_allclose(decoding.guided_logits(both, scale), uncond + scale * (cond - uncond), rtol=1e-6)
    np.testing.assert_array_equal(decoding.guided_logits(both, 1.0), cond)  # exactly


def test_guidance_refuses_beam_search_and_half_a_request():
    model, params, (cond, uncond) = network("tiny")
    with pytest.raises(UsageError, match="not beam search"):
        decoding.generate(model, params, cond, max_decode_length=T, method="beam", guidance_scale=2.0,
                          unconditional=uncond)
    with pytest.raises(UsageError, match="both guidance_scale and the unconditional batch"):
        decoding.generate(model, params, cond, max_decode_length=T, guidance_scale=2.0)
    short = dict(uncond, encoder_input_tokens=uncond["encoder_input_tokens"][:, :4])
    with pytest.raises(UsageError, match="pad both to the same length"):
        decoding.guidance_batch(model, cond, short)


# --- restricted decoding (token_mask): image codes only -------------------------------------

BEGIN, CODES = 40, tuple(range(41, 49))  # stand-ins for <img> and an 8-code codebook
GRID_MASK = decoding.ImageCodeMask(VOCAB, BEGIN, CODES, num_codes=T - 2, eos_id=1)  # <img>, 4 codes, EOS


def _assert_whole_grids(tokens):
    tokens = np.asarray(tokens)
    assert (tokens[:, 0] == BEGIN).all()
    assert np.isin(tokens[:, 1:T - 1], CODES).all()
    assert (tokens[:, T - 1] == 1).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_code_mask_makes_every_sample_a_whole_grid(name):
    model, params, (cond, uncond) = network(name)
    rng = jax.random.PRNGKey(5)
    sampled, _ = generate_fn(model, False, token_mask=GRID_MASK, **SAMPLE)(params, cond, rng)
    _assert_whole_grids(sampled)
    guided, _ = generate_fn(model, True, token_mask=GRID_MASK, **SAMPLE)(params, cond, uncond, 3.0, rng)
    _assert_whole_grids(guided)
    beams, _ = jax.jit(functools.partial(decoding.generate, model, max_decode_length=T, method="beam", num_beams=2,
                                         token_mask=GRID_MASK))(params, cond)
    _assert_whole_grids(beams)
    # The random network alone spells no grid: the mask is what makes them.
    plain, _ = generate_fn(model, False, **SAMPLE)(params, cond, rng)
    assert not (np.asarray(plain)[:, 0] == BEGIN).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_masked_cached_decoding_equals_uncached(name):
    model, params, (cond, _) = network(name)
    rng = jax.random.PRNGKey(2)
    cached, cached_scores = generate_fn(model, False, method="greedy", token_mask=GRID_MASK)(params, cond, rng)
    uncached, uncached_scores = generate_fn(model, False, method="greedy", use_cache=False,
                                            token_mask=GRID_MASK)(params, cond, rng)
    _assert_whole_grids(cached)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_allclose(cached_scores, uncached_scores, rtol=1e-4)


def _everything(position):
    return np.ones((VOCAB,), bool)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_text_decoding_is_unchanged_without_a_restriction(name):
    model, params, (cond, _) = network(name)
    rng = jax.random.PRNGKey(7)
    expected, expected_scores = generate_fn(model, False, **SAMPLE)(params, cond, rng)
    tokens, scores = generate_fn(model, False, token_mask=_everything, **SAMPLE)(params, cond, rng)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_code_masks_are_checked():
    with pytest.raises(UsageError, match="every id inside the vocabulary"):
        decoding.ImageCodeMask(VOCAB, BEGIN, (70,), num_codes=4)
    with pytest.raises(UsageError, match="need some codes"):
        decoding.ImageCodeMask(VOCAB, BEGIN, (), num_codes=4)
    model, params, (cond, _) = network("tiny")
    with pytest.raises(UsageError, match="token_mask covers 32 ids; the network's logits have 64"):
        decoding.generate(model, params, cond, max_decode_length=T,
                          token_mask=decoding.ImageCodeMask(32, 5, (6, 7), num_codes=4))
