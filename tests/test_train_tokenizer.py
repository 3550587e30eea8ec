"""`palimix train-tokenizer` on the demo's images: held-out PSNR rises over a few steps,
and what it writes loads back (the runner's checkpoint, MaskGIT's layout)."""

import json

import jax
import numpy as np
import pytest

from palimix import cli
from palimix.commands import train_tokenizer
from palimix.errors import UnknownNameError
from palimix.models import checkpoints, vqgan


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    code = cli.main(["train-tokenizer", "palimix_demo_caption", "--out", str(out), "--steps", "12",
                     "--batch_size", "8", "--eval_images", "16", "--learning_rate", "3e-3",
                     "--codebook_size", "32", "--log_every", "4", "--no_progress"])
    assert code == 0
    return out


@pytest.mark.slow
def test_psnr_on_held_out_demo_images_improves(trained):
    result = json.loads((trained / "tokenizer.json").read_text())
    assert result["eval_split"] == "validation" and result["eval_images"] == 16
    assert result["config"]["codebook_size"] == 32 and result["config"]["image_size"] == 64
    assert result["psnr"] > result["psnr_initial"] + 1.0, result


@pytest.mark.slow
def test_outputs_load_back(trained):
    from palimix.runner.checkpoints import Checkpoints

    result = json.loads((trained / "tokenizer.json").read_text())
    cfg = vqgan.config("tiny", codebook_size=32)
    params = checkpoints.load_vqgan(str(trained / "tokenizer.msgpack"), vqgan.init_params(cfg, jax.random.PRNGKey(9)))
    store = Checkpoints(str(trained), read_only=True)
    try:
        state, meta = store.restore({"params": params}, partial=True)
    finally:
        store.close()
    assert store.latest_step() == 12 and meta["psnr"] == pytest.approx(result["psnr"])
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loaded tokenizer reconstructs the held-out images as well as the run measured.
    run = train_tokenizer.TokenizerRun("palimix_demo_caption", str(trained), eval_images=16)
    images = train_tokenizer.held_out_images(run)
    psnr = train_tokenizer.evaluate_psnr(vqgan.Vqgan(cfg), params, images, 8)
    assert psnr == pytest.approx(result["psnr"], abs=1e-3)


def test_unknown_task_is_a_clear_error(tmp_path):
    run = train_tokenizer.TokenizerRun("palimix_demo_captions", str(tmp_path))
    with pytest.raises(UnknownNameError, match="palimix_demo_caption"):
        train_tokenizer.train_tokenizer(run)
