"""PaliModel inside T5X: loss, scoring, decoding with images, rules, warm start from mT5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); PaliModel wraps t5x's models")

import flax  # noqa: E402
import seqio  # noqa: E402
from flax.linen import partitioning as flax_partitioning  # noqa: E402
from t5x import adafactor, decoding, partitioning, utils  # noqa: E402

from palimix.models import configs, networks, pali, t5x_model  # noqa: E402

pytestmark = pytest.mark.t5x

VOCAB_SIZE = 128
CONFIG = configs.get("tiny", vocab_size=VOCAB_SIZE, image_size=32)  # 4 image tokens
VOCAB = seqio.PassThroughVocabulary(VOCAB_SIZE)


def _model(decode_fn=decoding.beam_search, **kwargs):
    optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
    return t5x_model.PaliModel(pali.Pali(CONFIG), VOCAB, VOCAB, optimizer, decode_fn=decode_fn, **kwargs)


def _batch(seed=0, image_mask=(1, 0)):
    rng = np.random.RandomState(seed)
    return {
        "encoder_images": rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
        "encoder_image_mask": np.array(image_mask, np.int32),
        "encoder_input_tokens": np.array([[3, 4, 5, 1, 0], [6, 7, 1, 0, 0]], np.int32),
        "decoder_input_tokens": np.array([[0, 8, 9, 1], [0, 10, 1, 0]], np.int32),
        "decoder_target_tokens": np.array([[8, 9, 1, 0], [10, 1, 0, 0]], np.int32),
        "decoder_loss_weights": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32),
    }


def _shapes(batch):
    return {k: v.shape for k, v in batch.items()}, {k: v.dtype for k, v in batch.items()}


# Everything runs under jax.jit, as in t5x (op-by-op execution compiles every small op
# separately), and each function is jitted once per module so tests share compilations.
BEAM = _model()
GREEDY = _model(decoding.temperature_sample)
GREEDY_PARAMS = {"temperature": 0.0, "eos_id": VOCAB_SIZE + 1}  # no EOS: full length
loss_fn = jax.jit(lambda params, batch: BEAM.loss_fn(params, batch, None))
score_fn = jax.jit(BEAM.score_batch)
greedy_fn = jax.jit(lambda params, batch: GREEDY.predict_batch_with_aux(params, batch, decoder_params=GREEDY_PARAMS))


@pytest.fixture(scope="module")
def variables():
    shapes, types = _shapes(_batch())
    return jax.jit(lambda rng: BEAM.get_initial_variables(rng, shapes, types))(jax.random.PRNGKey(0))


def test_initial_variables_declare_a_float32_image(variables):
    params = variables["params"]
    assert {"img", "img_proj", "encoder", "decoder", "token_embedder"} <= set(params)
    assert params["img"]["embedding"]["kernel"].dtype == jnp.float32
    assert "params_axes" in variables  # logical axis names for the partitioner


def test_loss_and_score_see_the_image(variables):
    params, batch = variables["params"], _batch()
    loss, metrics = loss_fn(params, batch)
    assert np.isfinite(loss) and {"loss", "accuracy"} <= set(metrics)
    scores = score_fn(params, batch)
    assert scores.shape == (2,)
    # Same weights: the summed log-likelihood is minus the (unnormalised) loss.
    np.testing.assert_allclose(-scores.sum(), loss, rtol=1e-4)
    other_images = score_fn(params, dict(batch, encoder_images=batch["encoder_images"][::-1].copy()))
    assert not np.isclose(scores[0], other_images[0])  # example 0 has a real image...
    np.testing.assert_allclose(scores[1], other_images[1], rtol=1e-5)  # ...example 1 a masked one


def _uncached_greedy(params, batch, steps):
    """Reference: argmax decoding by re-running the whole network at every step."""
    network = pali.Pali(CONFIG)
    apply = jax.jit(lambda p, decoder_inputs: network.apply(
        {"params": p}, batch["encoder_images"], batch["encoder_image_mask"], batch["encoder_input_tokens"],
        decoder_inputs, jnp.ones_like(decoder_inputs), enable_dropout=False,
    ))
    tokens = np.zeros_like(batch["decoder_target_tokens"])
    for t in range(steps):
        logits = apply(params, np.pad(tokens, ((0, 0), (1, 0)))[:, :-1])
        tokens[:, t] = np.argmax(logits[:, t], axis=-1)
    return tokens


def test_cached_greedy_decoding_equals_uncached_and_masks_blank_images(variables):
    params, batch = variables["params"], _batch()
    decodes, aux = greedy_fn(params, batch)
    assert aux["scores"].shape == (2,)
    np.testing.assert_array_equal(decodes, _uncached_greedy(params, batch, steps=4))
    # Example 1's image is masked: it decodes as the text-only network (same text
    # parameters, no ViT) does.
    text_params = {k: v for k, v in params.items() if k not in t5x_model.IMAGE_MODULES}
    text_batch = {k: v for k, v in batch.items() if not k.startswith("encoder_image")}
    text_only, _ = greedy_fn(text_params, text_batch)
    np.testing.assert_array_equal(decodes[1], text_only[1])


def test_beam_search_returns_sorted_beams(variables):
    beam = jax.jit(lambda p, b: BEAM.predict_batch_with_aux(p, b, num_decodes=3, return_all_decodes=True))
    decodes, aux = beam(variables["params"], _batch())
    assert decodes.shape == (2, 3, 4)
    scores = np.asarray(aux["scores"])
    assert scores.shape == (2, 3) and np.all(np.diff(scores, axis=1) >= 0)


def test_sampling_is_reproducible_with_an_rng(variables):
    params, batch = variables["params"], _batch()
    kw = dict(decoder_params={"temperature": 1.0, "topk": 0}, num_decodes=2, return_all_decodes=True)
    sample = jax.jit(lambda p, b, r: GREEDY.predict_batch_with_aux(p, b, rng=r, **kw))
    a, _ = sample(params, batch, jax.random.PRNGKey(1))
    b, _ = sample(params, batch, jax.random.PRNGKey(1))
    c, _ = sample(params, batch, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 2, 4) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="both"):
        GREEDY.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(1),
                                      decoder_params={"decode_rng": jax.random.PRNGKey(2)})


def test_packed_batches_are_refused(variables):
    packed = dict(_batch(), encoder_segment_ids=np.ones((2, 5), np.int32))
    with pytest.raises(ValueError, match="cannot be packed"):
        _model().loss_fn(variables["params"], packed, None)


def _axis_names(params_axes):
    names = set()
    leaves = jax.tree_util.tree_leaves(
        flax_partitioning.get_axis_names(params_axes), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    for spec in leaves:
        names.update(spec)
    return names


def test_rules_cover_every_logical_axis():
    # Every size uses the same modules, hence the same axis names as tiny.
    config = configs.get("tiny")
    axes = jax.eval_shape(lambda: networks.init_variables(config, jax.random.PRNGKey(0)))["params_axes"]
    names = _axis_names(axes)
    assert {"vit_embed", "vit_mlp", "embed", "vocab"} <= names
    mesh_rules = dict(t5x_model.pali_logical_axis_rules())
    assert names <= set(mesh_rules), names - set(mesh_rules)
    factor_rules = t5x_model.pali_logical_factor_rules()
    assert names <= set(factor_rules), names - set(factor_rules)
    # Adafactor accepts every parameter's factorisation (no incomplete ROW/COLUMN spec).
    optimizer = adafactor.Adafactor(logical_factor_rules=factor_rules)
    optimizer.set_param_axes(flax_partitioning.get_axis_names(axes))
    assert optimizer.hyper_params.factor_map


def test_warm_start_from_a_text_only_t5x_checkpoint(tmp_path, variables):
    """An mT5-style checkpoint written by t5x's own T5 restores PaLI's text side."""
    from t5x import checkpoints, models
    from t5x.examples.t5 import network

    text = CONFIG.text
    t5_config = network.T5Config(
        vocab_size=text.vocab_size, emb_dim=text.emb_dim, num_heads=text.num_heads, head_dim=text.head_dim,
        mlp_dim=text.mlp_dim, num_encoder_layers=text.num_encoder_layers, num_decoder_layers=text.num_decoder_layers,
        mlp_activations=tuple(text.mlp_activations), dtype="float32", dropout_rate=0.0, logits_via_embedding=False,
    )
    optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
    t5 = models.EncoderDecoderModel(network.Transformer(t5_config), VOCAB, VOCAB, optimizer)
    batch = _batch()
    text_batch = {k: v for k, v in batch.items() if not k.startswith("encoder_image")}
    text_shapes, text_types = _shapes(text_batch)
    partitioner = partitioning.PjitPartitioner(num_partitions=1, logical_axis_rules=t5x_model.pali_logical_axis_rules())
    t5_init = utils.TrainStateInitializer(optimizer, t5.get_initial_variables, text_shapes, partitioner, text_types)
    t5_state = t5_init.from_scratch(jax.random.PRNGKey(42))
    checkpoints.Checkpointer(t5_state, partitioner, str(tmp_path)).save(t5_state)
    checkpoint_path = str(tmp_path / "checkpoint_0")

    model = _model()
    shapes, types = _shapes(batch)
    init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables, shapes, partitioner, types)
    restore = utils.RestoreCheckpointConfig(
        path=checkpoint_path, mode="specific", dtype="float32",
        assignment_map=t5x_model.mt5_warm_start_assignment_map(), fallback_to_scratch=True,
    )
    # Fresh parameters come from init_rng, like the `variables` fixture's.
    state = init.from_checkpoint_or_scratch([restore], init_rng=jax.random.PRNGKey(0))

    restored = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.params), sep="/")
    written = flax.traverse_util.flatten_dict(flax.core.unfreeze(t5_state.params), sep="/")
    scratch = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]), sep="/")
    text_names = [k for k in restored if k.split("/")[0] not in t5x_model.IMAGE_MODULES]
    assert set(text_names) == set(written)  # same names as t5x's T5 1.1 / mT5
    for name in text_names:
        np.testing.assert_array_equal(restored[name], written[name], err_msg=name)
    image_names = [k for k in restored if k.split("/")[0] in t5x_model.IMAGE_MODULES]
    assert image_names
    for name in image_names:
        np.testing.assert_array_equal(restored[name], scratch[name], err_msg=name)
