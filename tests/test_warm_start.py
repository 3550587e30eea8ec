"""Warm start of `palimix train` from a public checkpoint: `--init_checkpoint PATH
--init_format {paligemma,gemma,vit,mt5}` (palimix.models.checkpoints.WARM_START_FORMATS).

The checkpoints are big_vision PaliGemma .npz files written by `save_paligemma` from a
differently seeded network. Runs train one step of one parameter (`TRAINED`; the rest
frozen), so the other saved step-1 parameters are exactly the ones the run started from."""

import json

import jax
import numpy as np
import pytest

from palimix import cli
from palimix.errors import UsageError
from palimix.models import checkpoints, configs, networks

pytestmark = pytest.mark.slow

from tests.runner_env import clean_gin, runner_environment  # noqa: F401  (autouse fixtures)

LENGTHS = "inputs=8,targets=8,image=32"
IMAGE_SIZE = 32
TRAINED = "llm/final_norm/scale"  # the one parameter the runs train (none is refused)


def _train(model_dir, *extra):
    return cli.main(["train", "runner_fixture_colors", "--model", "tiny_decoder", "--model_dir", str(model_dir),
                     "--batch_size", "4", "--lengths", LENGTHS, "--trainable", TRAINED, "--steps", "1", "--no_progress",
                     *extra])


def _saved_params(model_dir) -> dict:
    from palimix.runner import loading

    return checkpoints._flatten(loading.load_run(str(model_dir)).params)


def _write_npz(path, seed=1, **overrides) -> dict:
    """A big_vision PaliGemma .npz of tiny_decoder (seed 1: not the runner's seed 0);
    returns its parameters in palimix's (unstacked) layout."""
    config = configs.get("tiny_decoder", image_size=IMAGE_SIZE, **overrides)
    params = networks.init_params(config, jax.random.PRNGKey(seed))
    checkpoints.save_paligemma(params, str(path))
    return checkpoints._flatten(params)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "paligemma.npz"
    return path, _write_npz(path)


def _assert_equal(got: dict, want: dict, names):
    for name in set(names) - {TRAINED}:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)


def test_paligemma_format_loads_every_parameter_before_step_0(npz, tmp_path):
    path, want = npz
    assert _train(tmp_path / "run", "--init_checkpoint", str(path), "--init_format", "paligemma") == 0
    got = _saved_params(tmp_path / "run")
    assert sorted(got) == sorted(want)
    _assert_equal(got, want, want)
    run = json.load(open(tmp_path / "run" / "run.json"))
    assert (run["init_checkpoint"], run["init_format"]) == (str(path), "paligemma")


def test_gemma_format_loads_the_language_model_and_keeps_the_fresh_vit(npz, tmp_path):
    from palimix.runner import loading

    path, want = npz
    assert _train(tmp_path / "run", "--init_checkpoint", f"{path}:llm", "--init_format", "gemma") == 0
    got = _saved_params(tmp_path / "run")
    llm = [k for k in want if k.startswith("llm/")]
    image = [k for k in want if k.startswith("img/")]
    assert llm and image
    _assert_equal(got, want, llm)
    # The image side is the runner's own initialisation (seed 0), not the file's.
    fresh = checkpoints._flatten(loading.load_run(str(tmp_path / "run")).trainer.init_params())
    _assert_equal(got, fresh, image)
    assert not np.array_equal(np.asarray(got["img/head/kernel"]), want["img/head/kernel"])


def test_a_checkpoint_of_another_layout_names_what_is_missing_and_extra(tmp_path, capsys):
    # One qkv_einsum (as many kv heads as heads) against the model's q_einsum + kv_einsum.
    heads = configs.get("tiny_decoder").llm.num_heads
    path = tmp_path / "mha.npz"
    _write_npz(path, llm_num_kv_heads=heads)
    assert _train(tmp_path / "run", "--init_checkpoint", str(path), "--init_format", "paligemma") == 2
    error = capsys.readouterr().err
    assert "llm/layers_0/attn/q_einsum/w: not in the checkpoint" in error
    assert "llm/layers_0/attn/qkv_einsum/w: in the checkpoint, not in the model" in error
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--init_checkpoint", "x.npz"], "go together"),
    (["--init_format", "paligemma"], "go together"),
    (["--init_checkpoint", "{npz}", "--init_format", "paligema"], "Did you mean: paligemma"),
    (["--init_checkpoint", "/no/such.npz", "--init_format", "gemma"], "no such file"),
])
def test_bad_warm_start_flags_stop_before_training(npz, tmp_path, capsys, flags, message):
    flags = [f.format(npz=npz[0]) for f in flags]
    assert _train(tmp_path / "run", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()


def test_every_format_names_its_loader_and_part():
    assert {"paligemma", "gemma", "vit", "mt5"} <= set(checkpoints.WARM_START_FORMATS)
    params = {"img": {"a": 1}, "img_proj": {"b": 2}, "llm": {"c": 3}}
    parts = {name: sorted(checkpoints.warm_started_part(params, name)) for name in ("paligemma", "gemma", "vit")}
    assert parts == {"paligemma": ["img", "img_proj", "llm"], "gemma": ["llm"], "vit": ["img"]}
    assert sorted(checkpoints.warm_started_part(params, "mt5")) == ["llm"]
    with pytest.raises(UsageError, match="Formats: paligemma"):
        checkpoints.warm_start_format("npz")


def test_the_vit_format_fits_the_encoder_decoder(tmp_path):
    """The same table warm-starts PaLI's image tower from a big_vision ViT .npz."""
    config = configs.get("tiny")
    source = checkpoints._flatten(networks.init_params(config, jax.random.PRNGKey(1)))
    vit = {k[len("img/"):]: np.asarray(v) for k, v in source.items() if k.startswith("img/")}
    np.savez(tmp_path / "vit.npz", **vit)
    fresh = checkpoints._flatten(networks.init_params(config, jax.random.PRNGKey(0)))
    got = checkpoints._flatten(checkpoints.warm_start(networks.init_params(config, jax.random.PRNGKey(0)),
                                                      str(tmp_path / "vit.npz"), "vit"))
    _assert_equal(got, source, [k for k in source if k.startswith("img/")])
    _assert_equal(got, fresh, [k for k in source if not k.startswith("img/")])
