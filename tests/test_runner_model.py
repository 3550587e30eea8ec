"""One model definition for every path: the runner builds the network gin's
`configs.get` bindings describe (as T5X does), records it whole in run.json, and eval
rebuilds exactly that; frozen parameters stay bit-identical and get no optimizer state,
in the runner and in T5X."""

import json
import os

import gin
import jax
import numpy as np
import pytest

from palimix import cli
from palimix.models import configs, pali, trainable
from palimix.runner import model as model_lib

# A gin setup of the kind sizes/pali_17b.gin and runs/finetune.gin make: remat, dtype
# and dropout bound on configs.get (directly or through DROPOUT_RATE).
BINDINGS = ["IMAGE_SIZE = 32", "configs.get.remat = 'full'", "configs.get.dtype = 'bfloat16'",
            "DROPOUT_RATE = 0.25"]
EXPECTED = {"image_size": 32, "remat": "full", "dtype": "bfloat16", "lm_dropout_rate": 0.25}


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module", autouse=True)
def _environment(tmp_path_factory):
    # Once per process: the fixture module writes its images on first import, there.
    os.environ.setdefault("PALIMIX_RUNNER_FIXTURE_DIR", str(tmp_path_factory.mktemp("fixture_images")))
    os.environ["PALIMIX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    import tests.runner_fixture_tasks  # noqa: F401  (registers runner_fixture_colors)


def _parse(*files):
    from palimix.runner.config import parse_gin

    parse_gin(list(files) + ["sizes/tiny.gin"], BINDINGS)


def test_gin_bindings_define_the_runner_network():
    _parse("models/network.gin")
    definition = model_lib.from_gin()
    assert definition.name == "tiny" and definition.overrides == EXPECTED
    config = definition.config
    assert (config.remat, config.dtype, config.text.dropout_rate, config.vit.image_size) == ("full", "bfloat16", 0.25, 32)
    # The network T5X's gin builds from the same file is the same config.
    network = gin.query_parameter("%NETWORK").scoped_configurable_fn()
    assert network.config == config


def test_t5x_model_gets_the_runner_network():
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    _parse("models/pali.gin")
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.module.config == model_lib.from_gin().config


def test_run_json_records_the_model_and_eval_rebuilds_it(tmp_path):
    from palimix.runner import loading
    from palimix.runner.trainer import Trainer

    model_dir = tmp_path / "run"
    argv = ["train", "runner_fixture_colors", "--model_dir", str(model_dir), "--batch_size", "4",
            "--lengths", "inputs=8,targets=8,image=32", "--steps", "3", "--warmup_steps", "1", "--no_progress",
            "--frozen", "img/.*"]
    for binding in BINDINGS:
        argv += ["--gin", binding]
    assert cli.main(argv) == 0
    recorded = json.load(open(model_dir / "run.json"))["model"]
    assert recorded["name"] == "tiny" and recorded["overrides"] == EXPECTED
    assert recorded["config"]["remat"] == "full" and recorded["config"]["text"]["dropout_rate"] == 0.25
    assert recorded["trainable"] == {"trainable": [".*"], "frozen": ["img/.*"]}

    gin.clear_config()  # eval reads run.json, not gin
    run = loading.load_run(str(model_dir))
    assert run.trainer.network.config == configs.from_dict(recorded["config"])
    # Three steps later the frozen ViT is bit-identical to its initialisation (same seed).
    fresh = Trainer(run.trainer.definition, run.task_feature_lengths, batch_size=1).init_params()
    for got, initial in zip(jax.tree_util.tree_leaves(run.params["img"]), jax.tree_util.tree_leaves(fresh["img"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(initial))
    moved = [np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(run.params["img_proj"]), jax.tree_util.tree_leaves(fresh["img_proj"]))]
    assert all(moved)


def _batch(config, batch_size=2, length=8, seed=0):
    rng = np.random.default_rng(seed)
    s = config.vit.image_size
    targets = rng.integers(2, 100, (batch_size, length)).astype(np.int32)
    return {"encoder_images": rng.uniform(-1, 1, (batch_size, s, s, 3)).astype(np.float32),
            "encoder_image_mask": np.ones((batch_size,), np.int32),
            "encoder_input_tokens": rng.integers(2, 100, (batch_size, length)).astype(np.int32),
            "decoder_input_tokens": np.asarray(pali.shift_right(targets)),
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets, np.float32)}


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_runner_optimizer_holds_no_state_for_frozen_parameters():
    import optax

    from palimix.runner.trainer import Trainer

    definition = model_lib.ModelDefinition.create(
        "tiny", {"image_size": 32}, trainable.ParamSelection(frozen=["img/.*", "token_embedder/.*"]))
    # AdamW with weight decay: a frozen parameter would move if it were optimized at all.
    trainer = Trainer(definition, {"inputs": 8, "targets": 8, "image": 32}, batch_size=2,
                      tx=optax.adamw(1e-2, weight_decay=0.1))
    state = trainer.init_state()
    initial = jax.device_get(state["params"])
    batch = trainer.shard_batch(_batch(definition.config))
    for _ in range(3):
        state, _ = trainer.train_step(state, batch)
    params = jax.device_get(state["params"])
    for frozen in ("img", "token_embedder"):
        for a, b in zip(jax.tree_util.tree_leaves(params[frozen]), jax.tree_util.tree_leaves(initial[frozen])):
            np.testing.assert_array_equal(a, b)
    assert np.any(params["decoder"]["logits_dense"]["kernel"] != initial["decoder"]["logits_dense"]["kernel"])
    state_paths = _paths(state["opt_state"])
    assert not any("'img'" in p or "'token_embedder'" in p for p in state_paths)
    assert any("'encoder'" in p for p in state_paths)


@pytest.mark.t5x
def test_t5x_optimizer_holds_no_state_for_frozen_parameters():
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    import seqio
    from t5x import adafactor, partitioning, trainer as trainer_lib, utils

    from palimix.models import t5x_model

    config = configs.get("tiny", image_size=32)
    selection = trainable.ParamSelection(frozen=["img/.*"])
    optimizer = t5x_model.trainable_optimizer(
        adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules()), selection)
    vocab = seqio.PassThroughVocabulary(config.text.vocab_size)
    model = t5x_model.PaliModel(pali.Pali(config), vocab, vocab, optimizer)
    batch = _batch(config)
    partitioner = partitioning.PjitPartitioner(num_partitions=1,
                                               logical_axis_rules=t5x_model.pali_logical_axis_rules())
    init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables,
                                       {k: v.shape for k, v in batch.items()}, partitioner,
                                       {k: v.dtype for k, v in batch.items()})
    t5x_trainer = trainer_lib.Trainer(
        model, init.from_scratch(jax.random.PRNGKey(0)), partitioner, eval_names=[], summary_dir=None,
        train_state_axes=init.train_state_axes, rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-2,
        num_microbatches=None)
    try:
        initial = jax.device_get(t5x_trainer.train_state.params)
        t5x_trainer.train(iter([batch] * 3), num_steps=3)
        state = t5x_trainer.train_state
        params = jax.device_get(state.params)
    finally:
        t5x_trainer.close()
    for a, b in zip(jax.tree_util.tree_leaves(params["img"]), jax.tree_util.tree_leaves(initial["img"])):
        np.testing.assert_array_equal(a, b)
    assert np.any(params["img_proj"]["kernel"] != initial["img_proj"]["kernel"])
    param_states = state.param_states
    assert all(leaf is None for leaf in jax.tree_util.tree_leaves(param_states["img"], is_leaf=lambda x: x is None))
    assert jax.tree_util.tree_leaves(param_states["encoder"])


@pytest.mark.t5x
@pytest.mark.slow
def test_t5x_train_with_a_frozen_vit_saves_resumes_and_keeps_it(tmp_path):
    """t5x.train with `ParamSelection.frozen` bound in gin: checkpoints hold no optimizer
    state for the ViT, a second t5x.train resumes from them, and the ViT never moves."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    import subprocess
    import sys

    import orbax.checkpoint as ocp

    from palimix.commands.gin_path import gin_dir

    model_dir = tmp_path / "model"
    for steps in (2, 3):  # the second run restores checkpoint_2 and trains one step more
        command = [
            sys.executable, "-m", "t5x.train", f"--gin_search_paths={gin_dir()}", "--gin_file=models/pali.gin",
            "--gin_file=runs/pretrain.gin", "--gin_file=sizes/tiny.gin",
            "--gin.MIXTURE_OR_TASK_NAME='palimix_demo_ocr'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32, 'image': 64}", f"--gin.TRAIN_STEPS={steps}",
            "--gin.BATCH_SIZE=4", f"--gin.MODEL_DIR='{model_dir}'", "--gin.CHECKPOINT_PERIOD=1",
            "--gin.EVAL_PERIOD=10", "--gin.EVAL_STEPS=1", "--gin.WARMUP_STEPS=10",
            "--gin.trainable.ParamSelection.frozen=['img/.*']"]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-6000:]

    def load(step):
        return ocp.PyTreeCheckpointer().restore(str(model_dir / f"checkpoint_{step}" / "state"))

    first, last = load(0), load(3)
    assert set(last["state"]["param_states"]) == {"decoder", "encoder", "img_proj", "token_embedder"}
    for a, b in zip(jax.tree_util.tree_leaves(first["target"]["img"]), jax.tree_util.tree_leaves(last["target"]["img"])):
        np.testing.assert_array_equal(a, b)
    assert np.any(first["target"]["img_proj"]["kernel"] != last["target"]["img_proj"]["kernel"])
