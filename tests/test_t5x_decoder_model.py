"""PaliGemmaModel inside T5X: the decoder-only network's loss, scores and decoding
with images, on a tiny batch made by PaliDecoderFeatureConverter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); PaliGemmaModel wraps t5x's models")

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
from flax.linen import partitioning as flax_partitioning  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402
from t5x import adafactor, decoding  # noqa: E402

from palimix.models import configs, networks, paligemma, partitioning, t5x_decoder_model, t5x_model  # noqa: E402
from palimix.models.feature_converter import PaliDecoderFeatureConverter  # noqa: E402

pytestmark = pytest.mark.t5x

VOCAB_SIZE = 128
IMAGE_SIZE = 32  # 4 image tokens
CONFIG = configs.get("tiny_decoder", vocab_size=VOCAB_SIZE, image_size=IMAGE_SIZE)
VOCAB = seqio.PassThroughVocabulary(VOCAB_SIZE)
LENGTHS = {"inputs": 4, "targets": 3, "image": IMAGE_SIZE}


def _model(decode_fn=decoding.beam_search, **kwargs):
    optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
    return t5x_decoder_model.PaliGemmaModel(paligemma.PaliGemma(CONFIG), VOCAB, optimizer, decode_fn=decode_fn, **kwargs)


def _batch(seed=0, image_mask=(1, 0)):
    """Two examples with prompts of different lengths (4: the whole inputs length, and
    2), the first with a real image, the second with a masked one."""
    rng = np.random.RandomState(seed)
    examples = {
        "inputs": tf.ragged.constant([[3, 4, 5, 1], [6, 1]]),
        "targets": tf.ragged.constant([[8, 9, 1], [10, 1]]),
        "image": rng.uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "has_image": np.array(image_mask, np.int32),
    }
    ds = tf.data.Dataset.from_tensor_slices(examples)
    converted = PaliDecoderFeatureConverter()(ds, LENGTHS).batch(2)
    return next(converted.as_numpy_iterator())


def _shapes(batch):
    return {k: v.shape for k, v in batch.items()}, {k: v.dtype for k, v in batch.items()}


# Everything runs under jax.jit, as in t5x, each function jitted once per module.
BEAM = _model()
GREEDY = _model(decoding.temperature_sample)
GREEDY_PARAMS = {"temperature": 0.0, "eos_id": VOCAB_SIZE + 1}  # no EOS: full length
loss_fn = jax.jit(lambda params, batch: BEAM.loss_fn(params, batch, None))
score_fn = jax.jit(BEAM.score_batch)
logits_fn = jax.jit(lambda params, batch: BEAM._compute_logits(params, batch))
greedy_fn = jax.jit(lambda params, batch: GREEDY.predict_batch_with_aux(params, batch, decoder_params=GREEDY_PARAMS))


@pytest.fixture(scope="module")
def variables():
    shapes, types = _shapes(_batch())
    return jax.jit(lambda rng: BEAM.get_initial_variables(rng, shapes, types))(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def params(variables):
    """Initial parameters plus noise: a freshly initialised tiny network predicts the
    same token everywhere, which would make any decoding look right."""
    leaves, tree = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_the_converter_makes_prefix_lm_batches():
    batch = _batch()
    np.testing.assert_array_equal(batch["decoder_target_tokens"], [[3, 4, 5, 1, 8, 9, 1], [6, 1, 10, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["decoder_causal_attention"], [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["decoder_loss_weights"], [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]])
    assert BEAM.FEATURE_CONVERTER_CLS is PaliDecoderFeatureConverter


def test_initial_variables_declare_a_float32_image(variables):
    params = variables["params"]
    assert set(params) == {"img", "llm"}
    assert params["img"]["head"]["kernel"].dtype == jnp.float32
    assert "params_axes" in variables  # logical axis names for the partitioner
    # t5x.eval leaves the rank-0 image mask out of the shapes: one per example.
    shapes, types = _shapes(_batch())
    del shapes["encoder_image_mask"]
    without_mask = jax.eval_shape(lambda: BEAM.get_initial_variables(jax.random.PRNGKey(0), shapes, types))
    assert jax.tree_util.tree_structure(without_mask) == jax.tree_util.tree_structure(variables)


def test_score_is_the_answers_log_likelihood_and_sees_the_image(params):
    batch = _batch()
    scores = score_fn(params, batch)
    # By hand: log-probabilities of the answer tokens (and their EOS) only.
    log_probs = jax.nn.log_softmax(logits_fn(params, batch))
    token_log_probs = np.take_along_axis(np.asarray(log_probs), batch["decoder_target_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(scores, (token_log_probs * batch["decoder_loss_weights"]).sum(1), rtol=1e-5)
    loss, metrics = loss_fn(params, batch)
    assert {"loss", "accuracy"} <= set(metrics)
    np.testing.assert_allclose(-scores.sum(), loss, rtol=1e-4)  # no z-loss, unnormalised
    other_images = score_fn(params, dict(batch, encoder_images=batch["encoder_images"][::-1].copy()))
    assert not np.isclose(scores[0], other_images[0])  # example 0 has a real image...
    np.testing.assert_allclose(scores[1], other_images[1], rtol=1e-5)  # ...example 1 a masked one


def _uncached_greedy(params, batch, steps):
    """Reference: argmax decoding by re-running the whole network (teacher-forced, no
    cache) on prompt ++ the answer so far, at every step."""
    network = paligemma.PaliGemma(CONFIG)
    apply = jax.jit(lambda p, inputs, valid: network.apply(
        {"params": p}, batch["encoder_images"], batch["encoder_image_mask"], inputs, valid,
        batch["decoder_causal_attention"], enable_dropout=False))
    prompt_lengths = batch["decoder_causal_attention"].sum(1) - 1
    positions = np.arange(batch["decoder_target_tokens"].shape[1])
    tokens = np.where(positions < prompt_lengths[:, None], batch["decoder_target_tokens"], 0)
    rows = np.arange(len(tokens))
    for t in range(steps):
        inputs = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
        # The network reads `decoder_target_tokens > 0` as "a real position".
        valid = (positions <= (prompt_lengths + t)[:, None]).astype(np.int32)
        logits = apply(params, inputs, valid)
        tokens[rows, prompt_lengths + t] = np.argmax(logits[rows, prompt_lengths + t], axis=-1)
    return np.stack([tokens[r, n:n + steps] for r, n in zip(rows, prompt_lengths)])


def test_cached_greedy_decoding_equals_uncached_and_masks_blank_images(params):
    batch = _batch()
    decodes, aux = greedy_fn(params, batch)
    assert decodes.shape == (2, 7) and aux["scores"].shape == (2,)
    assert len(np.unique(decodes[:, :3])) > 2  # not one token everywhere
    # Example 0's prompt fills the inputs length: 3 answer positions are left.
    np.testing.assert_array_equal(decodes[:, :3], _uncached_greedy(params, batch, steps=3))
    assert np.all(decodes[0, 3:] == 0)  # after the sequence: padding
    # Example 1's image is masked: another image does not change its answer.
    other, _ = greedy_fn(params, dict(batch, encoder_images=batch["encoder_images"][::-1].copy()))
    np.testing.assert_array_equal(decodes[1], other[1])


def test_beam_search_returns_sorted_beams_after_the_prompt(params):
    beam = jax.jit(lambda p, b: BEAM.predict_batch_with_aux(p, b, num_decodes=3, return_all_decodes=True))
    decodes, aux = beam(params, _batch())
    assert decodes.shape == (2, 3, 7)
    scores = np.asarray(aux["scores"])
    assert scores.shape == (2, 3) and np.all(np.diff(scores, axis=1) >= 0)
    # The best beam of one is greedy decoding.
    one_beam = jax.jit(lambda p, b: BEAM.predict_batch_with_aux(
        p, b, num_decodes=1, decoder_params={"eos_id": VOCAB_SIZE + 1}))
    best, _ = one_beam(params, _batch())
    greedy, _ = greedy_fn(params, _batch())
    np.testing.assert_array_equal(best[:, :3], greedy[:, :3])


def test_sampling_is_reproducible_with_an_rng(params):
    batch = _batch()
    kw = dict(decoder_params={"temperature": 1.0, "topk": 0}, num_decodes=2, return_all_decodes=True)
    sample = jax.jit(lambda p, b, r: GREEDY.predict_batch_with_aux(p, b, rng=r, **kw))
    a, _ = sample(params, batch, jax.random.PRNGKey(1))
    b, _ = sample(params, batch, jax.random.PRNGKey(1))
    c, _ = sample(params, batch, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 2, 7) and not np.array_equal(a, c)


def test_packed_and_non_prefix_lm_batches_are_refused(variables):
    packed = dict(_batch(), decoder_segment_ids=np.ones((2, 7), np.int32))
    with pytest.raises(ValueError, match="decoder_segment_ids.*cannot be packed"):
        BEAM.loss_fn(variables["params"], packed, None)
    no_prefix = {k: v for k, v in _batch().items() if k != "decoder_causal_attention"}
    with pytest.raises(ValueError, match="decoder_causal_attention is missing"):
        BEAM.predict_batch_with_aux(variables["params"], no_prefix)


@pytest.mark.parametrize("name", ["tiny_decoder", "paligemma_3b"])
def test_rules_cover_every_logical_axis(name):
    # tiny_decoder has grouped-query attention (q_einsum + kv_einsum); so has
    # paligemma_3b (multi-query). Shapes only: nothing is allocated.
    config = configs.get(name)
    axes = jax.eval_shape(lambda: networks.init_variables(config, jax.random.PRNGKey(0)))["params_axes"]
    specs = partitioning.logical_specs(axes)
    names = {name for spec in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
             for name in spec}
    assert {"vit_embed", "embed", "vocab", "kv_heads"} <= names
    assert names <= set(dict(t5x_model.pali_logical_axis_rules())), names
    factor_rules = t5x_model.pali_logical_factor_rules()
    assert names <= set(factor_rules), names - set(factor_rules)
    optimizer = adafactor.Adafactor(logical_factor_rules=factor_rules)
    optimizer.set_param_axes(flax_partitioning.get_axis_names(axes))
    assert optimizer.hyper_params.factor_map
