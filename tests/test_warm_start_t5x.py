"""Warm start of `t5x.train` from a big_vision PaliGemma .npz: `palimix convert-checkpoint`
writes a t5x checkpoint (t5x's own Checkpointer), and t5x.train restores it through
runs/pretrain.gin's `RestoreCheckpointConfig(mode='specific', fallback_to_scratch=True)`
with the bindings the command prints. t5x.train saves the state it starts from as
MODEL_DIR/checkpoint_0: its parameters must be the file's."""

import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); this test runs t5x.train")

from palimix import cli  # noqa: E402
from palimix.commands.convert_checkpoint import t5x_restore_bindings  # noqa: E402
from palimix.commands.gin_path import gin_dir  # noqa: E402
from palimix.models import checkpoints, configs, networks  # noqa: E402

pytestmark = [pytest.mark.t5x, pytest.mark.slow]

MIXTURE = "palimix_demo_ocr"
LENGTHS = "{'inputs': 64, 'targets': 32, 'image': 64}"
SIZE_FILE = "sizes/tiny_decoder.gin"  # IMAGE_SIZE 64


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _t5x_train(cwd, model_dir, checkpoint):
    command = [
        sys.executable, "-m", "t5x.train", f"--gin_search_paths={gin_dir()}",
        "--gin_file=models/paligemma.gin", "--gin_file=runs/pretrain.gin", f"--gin_file={SIZE_FILE}",
        f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=4", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.CHECKPOINT_PERIOD=1", "--gin.EVAL_PERIOD=1", "--gin.EVAL_STEPS=1", "--gin.WARMUP_STEPS=10",
        *(f"--gin.{b}" for b in t5x_restore_bindings(str(checkpoint))),
    ]
    # cwd: a fresh folder, so no local models/ runs/ sizes/ folder shadows the gin files.
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.mark.parametrize("format", ["paligemma", "gemma"])
def test_t5x_train_starts_from_a_converted_paligemma_npz(tmp_path, format):
    config = configs.get("tiny_decoder", image_size=64)
    params = networks.init_params(config, jax.random.PRNGKey(7))
    want = checkpoints._flatten(params)
    npz = checkpoints.save_paligemma(params, str(tmp_path / "paligemma.npz"))

    assert cli.main(["convert-checkpoint", npz, str(tmp_path / "converted"), "--format", format,
                     "--gin_file", SIZE_FILE]) == 0
    converted = checkpoints.read_t5x_checkpoint(str(tmp_path / "converted" / "checkpoint_0"))
    loaded = sorted(want) if format == "paligemma" else sorted(k for k in want if k.startswith("llm/"))
    assert sorted(converted) == loaded  # gemma: the language model only; t5x initialises the rest

    model_dir = tmp_path / "model"
    _t5x_train(tmp_path, model_dir, tmp_path / "converted" / "checkpoint_0")
    assert (model_dir / "checkpoint_1").is_dir()  # it trained from there
    start = checkpoints.read_t5x_checkpoint(str(model_dir / "checkpoint_0"))
    assert sorted(start) == sorted(want)
    for name in loaded:
        np.testing.assert_array_equal(start[name], want[name], err_msg=name)
    if format == "gemma":  # the ViT and its projection: t5x's own initialisation
        assert not np.array_equal(start["img/head/kernel"], want["img/head/kernel"])


def test_convert_refuses_a_checkpoint_that_does_not_fit_the_model(tmp_path, capsys):
    heads = configs.get("tiny_decoder").llm.num_heads
    config = configs.get("tiny_decoder", image_size=64, llm_num_kv_heads=heads)  # one qkv_einsum
    npz = checkpoints.save_paligemma(networks.init_params(config, jax.random.PRNGKey(0)),
                                     str(tmp_path / "mha.npz"))
    assert cli.main(["convert-checkpoint", npz, str(tmp_path / "out"), "--format", "paligemma",
                     "--gin_file", SIZE_FILE]) == 2
    error = capsys.readouterr().err
    assert "llm/layers_0/attn/kv_einsum/w: not in the checkpoint" in error
    assert "llm/layers_0/attn/qkv_einsum/w: in the checkpoint, not in the model" in error
    assert not (tmp_path / "out").exists()


def test_the_mt5_format_reads_what_save_t5x_writes(tmp_path):
    """The text side of a PaLI model, written as a t5x checkpoint and warm-started back."""
    config = configs.get("tiny")
    variables = networks.init_variables(config, jax.random.PRNGKey(1))
    part = checkpoints.warm_started_part(variables["params"], "mt5")
    axes = {k: v for k, v in variables["params_axes"].items() if k in part}
    path = checkpoints.save_t5x({"params": part, "params_axes": axes}, str(tmp_path / "mt5"))
    want = checkpoints._flatten(variables["params"])
    fresh = networks.init_params(config, jax.random.PRNGKey(0))
    got = checkpoints._flatten(checkpoints.warm_start(fresh, path, "mt5"))
    fresh = checkpoints._flatten(fresh)
    assert sorted(part) == sorted(k for k in variables["params"] if k not in ("img", "img_proj"))
    for name, value in got.items():
        expected = fresh[name] if name.split("/")[0] in ("img", "img_proj") else want[name]
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=name)
