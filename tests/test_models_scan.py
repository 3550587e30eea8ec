"""Scanned layers (`scan_layers=True`): the same network as the unscanned one once the
parameters are converted (`scan_layout`), in logits, decoding, training and checkpoints."""

import dataclasses
import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from palimix.errors import CheckpointMismatchError
from palimix.models import checkpoints, configs, decoding, networks, partitioning, scan_layout
from palimix.runner.model import ModelDefinition
from palimix.runner.trainer import Trainer

VOCAB = 64
NAMES = ("tiny", "tiny_decoder")
LENGTHS = {"inputs": 6, "targets": 5}


@functools.lru_cache(maxsize=None)
def unscanned(name, **overrides):
    """(config, params) of the unscanned network."""
    config = configs.get(name, vocab_size=VOCAB, **overrides)
    return config, networks.init_params(config, jax.random.PRNGKey(0))


def scanned(config, **changes):
    return dataclasses.replace(config, scan_layers=True, **changes)


def make_batch(config, seed=0):
    """The network's features with random tokens (the second example's text ends in
    padding, its image is blank) and a random image."""
    rng = np.random.default_rng(seed)
    batch = dict(networks.dummy_batch(config, 2, LENGTHS))
    for name, value in batch.items():
        if name.endswith("_tokens"):
            tokens = rng.integers(2, VOCAB, value.shape).astype(np.int32)
            tokens[1, -2:] = 0
            batch[name] = jnp.asarray(tokens)
    s = config.vit.image_size
    batch["encoder_images"] = jnp.asarray(rng.uniform(-1, 1, (2, s, s, 3)), jnp.float32)
    batch["encoder_image_mask"] = jnp.asarray([1, 0], jnp.int32)
    return batch


def logits(config, params, batch):
    network = networks.build(config)
    apply = jax.jit(lambda p, b: network.apply({"params": p}, *networks.inputs(network, b), enable_dropout=False))
    return np.asarray(apply(params, batch))


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_scanned_network_gives_the_same_logits(name):
    config, params = unscanned(name)
    batch = make_batch(config)
    np.testing.assert_allclose(logits(scanned(config), scan_layout.stack_layers(params, config), batch),
                               logits(config, params, batch), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_layout_round_trips_are_exact(name):
    config, params = unscanned(name)
    stacked = scan_layout.stack_layers(params, config)
    assert_trees_equal(scan_layout.unstack_layers(stacked, config), params)
    # The converter's layout is the scanned network's own.
    own = networks.init_params(scanned(config), jax.random.PRNGKey(1))
    assert jax.tree_util.tree_structure(own) == jax.tree_util.tree_structure(stacked)
    assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, stacked)
    assert_trees_equal(scan_layout.stack_layers(scan_layout.unstack_layers(own, config), config), own)
    with pytest.raises(CheckpointMismatchError, match="scanned already"):
        scan_layout.stack_layers(stacked, config)
    with pytest.raises(CheckpointMismatchError, match="unscanned already"):
        scan_layout.unstack_layers(params, config)


def test_stacked_blocks_of_another_depth_are_refused():
    config, params = unscanned("tiny")
    flat = scan_layout.flatten(params)
    flat = {k: v for k, v in flat.items() if not k.startswith("encoder/layers_1/")}
    with pytest.raises(CheckpointMismatchError, match="encoder/layers_N holds 1 blocks, the model has 2"):
        scan_layout.stack_flat(flat, scan_layout.stack_depths(config))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_is_identical_scanned(name):
    config, params = unscanned(name)
    batch = make_batch(config, seed=1)
    stacked = scan_layout.stack_layers(params, config)

    def decode(cfg, p, **kw):
        network = networks.build(cfg)
        run = jax.jit(lambda p, b: decoding.generate(network, p, b, max_decode_length=6, eos_id=None, **kw))
        return jax.device_get(run(p, {k: batch[k] for k in network.PREDICT_INPUTS}))

    for kw in (dict(method="greedy"), dict(method="beam", num_beams=2)):
        tokens, scores = decode(config, params, **kw)
        tokens_scanned, scores_scanned = decode(scanned(config), stacked, **kw)
        np.testing.assert_array_equal(tokens_scanned, tokens)
        np.testing.assert_allclose(scores_scanned, scores, atol=1e-4)


@pytest.mark.t5x
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_t5x_beam_search_is_identical_scanned(name):
    """T5X's decode functions reorder the cache's rows with cache_offset=0: the scanned
    cache is batch-first too."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    import seqio
    from t5x import adafactor
    from t5x import decoding as t5x_decoding

    from palimix.models import t5x_decoder_model, t5x_model

    config, params = unscanned(name)
    batch = make_batch(config, seed=2)
    vocabulary = seqio.PassThroughVocabulary(VOCAB)
    pali_family = configs.family_of(config) == "pali"

    def predict(cfg, p):
        optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
        if pali_family:
            model = t5x_model.PaliModel(networks.build(cfg), vocabulary, vocabulary, optimizer,
                                        decode_fn=t5x_decoding.beam_search)
        else:
            model = t5x_decoder_model.PaliGemmaModel(networks.build(cfg), vocabulary, optimizer,
                                                     decode_fn=t5x_decoding.beam_search)
        run = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, num_decodes=2, return_all_decodes=True))
        return jax.device_get(run(p, batch))

    decodes, aux = predict(config, params)
    decodes_scanned, aux_scanned = predict(scanned(config), scan_layout.stack_layers(params, config))
    np.testing.assert_array_equal(decodes_scanned, decodes)
    np.testing.assert_allclose(aux_scanned["scores"], aux["scores"], atol=1e-4)


def test_scanned_cache_is_batch_first():
    config, params = unscanned("tiny")
    network = networks.build(scanned(config))
    batch = make_batch(config)
    prepared = decoding.prepare(network, scan_layout.stack_layers(params, config),
                                {k: batch[k] for k in network.PREDICT_INPUTS}, max_decode_length=4)
    cached_key = prepared.cache["decoder"]["layers"]["self_attention"]["cached_key"]
    heads, head_dim = config.text.num_heads, config.text.head_dim
    assert cached_key.shape == (2, config.text.num_decoder_layers, heads, head_dim, 4)


def _train_batch(config):
    batch = make_batch(config)
    weights = (batch["decoder_target_tokens"] > 0).astype(jnp.float32)
    return {**batch, "decoder_loss_weights": weights}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_train_step_scanned_equals_the_unscanned_one(name):
    """The runner's step (remat inside the scan) from converted parameters: the same
    loss, and the same parameters after the update. (SGD: an elementwise update. Optax's
    Adafactor clips and scales by each parameter's RMS, so over a stacked parameter it
    would see all layers at once.)"""
    overrides = {"vocab_size": VOCAB, "remat": "dots"}
    results = {}
    for scan in (False, True):
        definition = ModelDefinition.create(name, {**overrides, "scan_layers": scan})
        trainer = Trainer(definition, {**LENGTHS, "image": definition.config.vit.image_size}, batch_size=2,
                          tx=optax.sgd(0.1))
        state = trainer.init_state()
        if scan:  # start from the unscanned run's parameters
            state["params"] = scan_layout.stack_layers(results[False][2], definition.config)
            state["opt_state"] = trainer.tx.init(state["params"])
        initial = jax.device_get(state["params"])
        state, metrics = trainer.train_step(state, trainer.shard_batch(_train_batch(definition.config)))
        results[scan] = (jax.device_get(metrics), jax.device_get(state["params"]), initial)
    config = configs.get(name, **overrides)
    np.testing.assert_allclose(results[True][0]["loss"], results[False][0]["loss"], rtol=1e-5)
    assert np.isfinite(results[True][0]["grad_norm"]) and results[True][0]["grad_norm"] > 0
    unstacked = scan_layout.unstack_layers(results[True][1], config)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), unstacked, results[False][1])


def test_scanned_parameters_carry_the_layers_axis_unsharded():
    config = scanned(configs.get("tiny", vocab_size=VOCAB))
    axes = networks.init_variables(config, jax.random.PRNGKey(0))["params_axes"]
    specs = partitioning.logical_specs(axes)
    assert specs["encoder"]["layers"]["mlp"]["wi_0"]["kernel"] == PartitionSpec("layers", "embed", "mlp")
    mesh = partitioning.make_mesh(data=1, model=1, devices=jax.devices()[:1])
    shardings = partitioning.param_shardings(axes, mesh)
    assert shardings["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].spec == PartitionSpec(None, None, "model")


@pytest.mark.slow
def test_checkpoints_load_into_a_scanned_network(tmp_path):
    # big_vision PaliGemma (stacked blocks in the file) into a scanned network: as they are.
    config, params = unscanned("tiny_decoder")
    path = checkpoints.save_paligemma(params, tmp_path / "pg.npz")
    target = networks.init_params(scanned(config), jax.random.PRNGKey(1))
    assert_trees_equal(checkpoints.load_paligemma(path, target), scan_layout.stack_layers(params, config))
    # t5x mT5 (per-layer names) into a scanned PaLI: stacked; the image side untouched.
    config, params = unscanned("tiny")
    target = networks.init_params(scanned(config), jax.random.PRNGKey(1))
    text = {k: v for k, v in params.items() if k not in checkpoints.IMAGE_SIDE}
    loaded = checkpoints.load_mt5(text, target)
    expected = scan_layout.stack_layers(params, config)
    assert_trees_equal(loaded["encoder"], expected["encoder"])
    assert_trees_equal(loaded["decoder"], expected["decoder"])
    assert_trees_equal(loaded["img"], target["img"])
    # A per-block big_vision ViT into the scanned ViT.
    loaded = checkpoints.load_vit(params["img"], target)
    assert_trees_equal(loaded["img"], expected["img"])


# --- the benchmarks that measure scanning at scale, smoke-run on the tiny config -------

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _last_json_line(*command):
    done = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_compile_benchmark_runs_on_the_tiny_config():
    summary = _last_json_line(BENCHMARKS / "compile.py", "--models", "tiny", "--layouts", "scanned", "--batch", "2")
    times = summary["results"]["tiny"]["scanned"]
    assert times["compile_s"] > 0 and times["lower_s"] > 0


@pytest.mark.slow
def test_memory_benchmark_runs_on_the_tiny_config():
    summary = _last_json_line(BENCHMARKS / "memory.py", "--models", "tiny", "--devices", "2", "--model-parallel", "2",
                              "--batch", "2")
    measured = summary["results"]["tiny"]["2"]
    assert measured["mesh"] == {"data": 1, "model": 2} and 0 < measured["bytes"] < 1e9
    assert summary["smallest_mesh"]["tiny"] == {"80GB": 2, "141GB": 2}
