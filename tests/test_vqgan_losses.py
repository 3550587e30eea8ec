"""The tokenizer's optional losses: LPIPS on torchvision's VGG16 (loaded from a file in
torchvision's layout, its math recomputed in numpy from that file's arrays), MaskGIT's
StyleGAN discriminator and the GAN losses, and `palimix train-tokenizer` with both on.

No pretrained weights can be downloaded here: the files are written by the tests, with
random weights, under the public names (torchvision's `vgg16().state_dict()`,
LPIPS's `lin{k}.model.1.weight`)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from palimix import cli
from palimix.commands import train_tokenizer
from palimix.errors import CheckpointMismatchError, UsageError
from palimix.models import checkpoints, discriminator, perceptual, vqgan

VGG16_CONVS = [(index, width) for indices, width in perceptual.VGG16_STAGES for index in indices]


def random_torchvision_vgg16(seed=0):
    """{torchvision name: array} of `vgg16().state_dict()`'s feature convs (He-normal,
    so the features neither vanish nor explode), plus a (small, stand-in) classifier."""
    rng, tensors, cin = np.random.default_rng(seed), {}, 3
    for index, width in VGG16_CONVS:
        tensors[f"features.{index}.weight"] = (rng.standard_normal((width, cin, 3, 3)) * np.sqrt(2 / (9 * cin))
                                               ).astype(np.float32)
        tensors[f"features.{index}.bias"] = (0.01 * rng.standard_normal(width)).astype(np.float32)
        cin = width
    tensors["classifier.0.weight"] = np.zeros((8, 16), np.float32)  # ignored by the loader
    return tensors


def write_torchvision_vgg16(path, seed=0):
    save_file(random_torchvision_vgg16(seed), str(path))
    return str(path)


def lpips_heads(seed=1):
    rng = np.random.default_rng(seed)
    widths = [width for _, width in perceptual.VGG16_STAGES]
    return {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, w, 1, 1)).astype(np.float32) for k, w in enumerate(widths)}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    return write_torchvision_vgg16(tmp_path_factory.mktemp("vgg") / "vgg16.safetensors")


@pytest.fixture(scope="module")
def lin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "vgg_lin.npz"
    np.savez(path, **lpips_heads())
    return str(path)


# --- LPIPS in numpy, from torch-layout arrays ------------------------------------------------


def np_torch_conv(x, weight, bias):
    """PyTorch's Conv2d(padding=1) on NHWC x with an [out, in, 3, 3] weight."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # B,H,W,C,3,3
    return np.einsum("bhwcij,ocij->bhwo", windows, weight) + bias


def np_lpips(a, b, tensors, heads):
    def taps(x):
        x = (x - np.array(perceptual.LPIPS_SHIFT)) / np.array(perceptual.LPIPS_SCALE)
        out = []
        for stage, (indices, _) in enumerate(perceptual.VGG16_STAGES):
            if stage:
                n, h, w, c = x.shape
                x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            for i in indices:
                x = np.maximum(np_torch_conv(x, tensors[f"features.{i}.weight"], tensors[f"features.{i}.bias"]), 0)
            out.append(x)
        return out

    total = 0.0
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        unit = lambda f: f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10)  # noqa: E731
        total = total + ((unit(fa) - unit(fb)) ** 2 * heads[k]).sum(-1).mean(axis=(1, 2))
    return total


def test_lpips_vgg16_loads_torchvisions_layout_and_matches_the_numpy_math(vgg_file, lin_file):
    params = checkpoints.load_lpips_vgg16(vgg_file, perceptual.init_params(), lin=lin_file)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    tensors = random_torchvision_vgg16()
    np.testing.assert_array_equal(flat["vgg/features_28/kernel"], tensors["features.28.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["vgg/features_0/bias"], tensors["features.0.bias"])
    heads = [v.reshape(-1) for v in lpips_heads().values()]
    np.testing.assert_array_equal(flat["lin3"], heads[3])
    rng = np.random.default_rng(2)
    a, b = (rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32) for _ in range(2))
    got = perceptual.Lpips().apply({"params": params}, a, b)
    np.testing.assert_allclose(np.asarray(got), np_lpips(a, b, tensors, heads), rtol=2e-4)
    # Without LPIPS's heads: every head 1 (LPIPS's lpips=False).
    unweighted = checkpoints.load_lpips_vgg16(vgg_file, perceptual.init_params())
    got = perceptual.Lpips().apply({"params": unweighted}, a, b)
    np.testing.assert_allclose(np.asarray(got), np_lpips(a, b, tensors, [1.0] * 5), rtol=2e-4)


def test_lpips_loader_reports_missing_misshaped_and_foreign_files(tmp_path, lin_file):
    tensors = random_torchvision_vgg16()
    del tensors["features.26.bias"]
    tensors["features.0.weight"] = np.zeros((64, 1, 3, 3), np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="vgg/features_26/bias: not in the checkpoint") as e:
        checkpoints.load_lpips_vgg16(str(tmp_path / "bad.safetensors"), perceptual.init_params())
    assert "vgg/features_0/kernel: checkpoint (3, 3, 1, 64) vs model (3, 3, 3, 64)" in str(e.value)
    np.savez(tmp_path / "other.npz", **{"encoder.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointMismatchError, match="no torchvision VGG16 features"):
        checkpoints.load_lpips_vgg16(str(tmp_path / "other.npz"), perceptual.init_params())
    save_file(random_torchvision_vgg16(), str(tmp_path / "vgg.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="not LPIPS's linear heads"):
        checkpoints.load_lpips_vgg16(str(tmp_path / "vgg.safetensors"), perceptual.init_params(),
                                     lin=str(tmp_path / "other.npz"))


# --- the perceptual term in the tokenizer's loss ---------------------------------------------

NARROW = (4, 8, 8, 8, 8)  # VGG16's stages at a fraction of the width, for quick math checks
CFG = vqgan.config("tiny", codebook_size=8, embedding_dim=4, filters=8, num_res_blocks=1,
                   channel_multipliers=(1, 2), norm_groups=4, image_size=16)


@pytest.fixture(scope="module")
def narrow_lpips():
    losses = train_tokenizer.TokenizerLosses(perceptual_weight=1.0, lpips=perceptual.Lpips(NARROW))
    return losses, {"perceptual": perceptual.init_params(NARROW, jax.random.PRNGKey(3), image_size=16)}


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise(narrow_lpips):
    losses, frozen = narrow_lpips
    distance = losses.terms(frozen, {}, with_adversarial=False).perceptual
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
    assert float(vqgan.perceptual_loss(distance, images, images)) == pytest.approx(0.0, abs=1e-6)
    noisy = images + 0.2 * jnp.asarray(np.random.default_rng(1).standard_normal(images.shape), jnp.float32)
    per_image = np.asarray(distance(images, noisy))
    assert per_image.shape == (3,) and (per_image > 1e-3).all()


@pytest.mark.slow
def test_gradients_reach_the_tokenizer_not_the_frozen_feature_network(narrow_lpips):
    losses, frozen = narrow_lpips
    model = vqgan.Vqgan(CFG)
    params = vqgan.init_params(CFG, jax.random.PRNGKey(0))
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)

    def loss(tokenizer_params, frozen_params):
        terms = losses.terms(frozen_params, {}, with_adversarial=False)
        return vqgan.losses(model, tokenizer_params, images, terms)

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (total, parts), (grads, frozen_grads) = grad_fn(params, frozen)
    assert float(parts["perceptual_loss"]) > 0
    assert float(total) == pytest.approx(float(parts["reconstruction_loss"] + parts["quantizer_loss"]
                                               + parts["perceptual_loss"]), rel=1e-5)
    assert float(jnp.abs(grads["decoder"]["Conv_0"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["encoder"]["Conv_0"]["kernel"]).sum()) > 0  # straight through the codes
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(frozen_grads))
    # The perceptual term alone moves the decoder: its gradient differs from the L2-only one.
    plain_grads = jax.jit(jax.grad(lambda p: vqgan.losses(model, p, images)[0]))(params)
    assert not np.allclose(np.asarray(grads["decoder"]["Conv_0"]["kernel"]),
                           np.asarray(plain_grads["decoder"]["Conv_0"]["kernel"]))


def test_loss_terms_need_their_networks():
    with pytest.raises(UsageError, match="perceptual"):
        vqgan.LossTerms(perceptual_weight=0.1)
    with pytest.raises(UsageError, match="discriminator"):
        vqgan.LossTerms(adversarial_weight=0.1)


# --- the discriminator ----------------------------------------------------------------------


def test_discriminator_has_maskgits_module_tree():
    cfg = discriminator.DiscriminatorConfig(filters_at_256=8, max_filters=16)
    shapes = jax.eval_shape(lambda: discriminator.init_params(cfg, jax.random.PRNGKey(0), 16))
    flat = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
    # 16 px: widths min(16, 8 * 256 / res) = 16 at every resolution; two halvings to 4x4.
    expected = {"Conv_0/kernel": (3, 3, 3, 16), "Conv_0/bias": (16,),
                "Conv_1/kernel": (3, 3, 16, 16), "Conv_1/bias": (16,),
                "Dense_0/kernel": (4 * 4 * 16, 16), "Dense_0/bias": (16,),
                "Dense_1/kernel": (16, 1), "Dense_1/bias": (1,)}
    for block in ("ResBlock_0", "ResBlock_1"):
        expected.update({f"{block}/Conv_0/kernel": (3, 3, 16, 16), f"{block}/Conv_0/bias": (16,),
                         f"{block}/Conv_1/kernel": (1, 1, 16, 16),  # the shortcut, no bias
                         f"{block}/Conv_2/kernel": (3, 3, 16, 16), f"{block}/Conv_2/bias": (16,)})
    assert flat == expected
    # MaskGIT's widths by resolution (its `filters` table) from the default config.
    widths = [discriminator.config("maskgit").width(r) for r in (4, 32, 64, 128, 256, 512)]
    assert widths == [512, 512, 256, 128, 64, 32]
    with pytest.raises(UsageError, match="power of two"):
        discriminator.init_params(cfg, jax.random.PRNGKey(0), 24)


def test_blur_pool_is_the_normalized_1331_filter_at_stride_2():
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    taps = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME for 4 taps at stride 2: one each side
    expected = np.zeros((2, 4, 4, 3), np.float32)
    for i in range(4):
        for j in range(4):
            expected[:, i, j] = np.einsum("bhwc,hw->bc", padded[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4], taps)
    np.testing.assert_allclose(np.asarray(discriminator.blur_pool(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_name", ["non_saturating", "hinge"])
def test_a_discriminator_step_lowers_its_loss_on_a_fixed_batch(loss_name):
    cfg = discriminator.config("tiny")
    net = discriminator.Discriminator(cfg)
    optimizer = optax.adam(1e-3, b1=0.9, b2=0.99)
    losses = train_tokenizer.TokenizerLosses(adversarial_weight=0.1, discriminator=net,
                                             adversarial=discriminator.adversarial_loss(loss_name),
                                             discriminator_optimizer=optimizer)
    params = discriminator.init_params(cfg, jax.random.PRNGKey(0), 16)
    state = {"params": params, "opt_state": optimizer.init(params)}
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1, 1, 16, dtype=np.float32)
    real = jnp.asarray(np.broadcast_to(ramp[None, :, None, None], (4, 16, 16, 3)))  # smooth images
    fake = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32))  # noise
    step = jax.jit(losses.discriminator_step)
    state, first = step(state, real, fake)
    for _ in range(10):
        state, parts = step(state, real, fake)
    first, loss = float(first["discriminator_loss"]), float(parts["discriminator_loss"])
    assert loss < first - 0.05, (first, loss)
    # The generator's side: the loss it minimizes is higher on what the discriminator rejects.
    logits = net.apply({"params": state["params"]}, jnp.concatenate([real, fake]))
    gen = losses.adversarial.generator
    assert float(gen(logits[4:])) > float(gen(logits[:4]))


def test_r1_penalty_is_the_squared_pixel_gradient_of_the_real_logits():
    cfg = discriminator.DiscriminatorConfig(filters_at_256=8, max_filters=8)
    net = discriminator.Discriminator(cfg)
    params = discriminator.init_params(cfg, jax.random.PRNGKey(0), 8)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    # Central differences, one pixel value at a time, in float64 to keep them exact enough.
    with jax.enable_x64():
        params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        x = jnp.asarray(images, jnp.float64)
        eps, n = 1e-4, x[0].size
        bumps = jnp.eye(n, dtype=jnp.float64).reshape(n, 1, 8, 8, 3) * eps
        logit = jax.vmap(lambda d: net.apply({"params": params64}, x + d)[:, 0])
        grads = (logit(bumps) - logit(-bumps)) / (2 * eps)  # [pixels, B]
        expected = float(jnp.mean(jnp.sum(grads**2, axis=0)))
    assert float(discriminator.r1_penalty(net, params, images)) == pytest.approx(expected, rel=1e-3)
    fake = -images
    loss = discriminator.ADVERSARIAL_LOSSES["non_saturating"]
    total, parts = discriminator.discriminator_loss(net, params, images, fake, loss, r1_weight=10.0)
    assert float(total) == pytest.approx(float(parts["discriminator_loss"] + 10.0 * parts["r1_penalty"]), rel=1e-5)
    assert set(discriminator.discriminator_loss(net, params, images, fake, loss)[1]) == {"discriminator_loss"}


# --- train-tokenizer --------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"perceptual_weight": 0.1}, "needs --perceptual_network"),
    ({"perceptual_network": "vgg.safetensors"}, "do nothing without --perceptual_weight"),
    ({"perceptual_weight": 0.1, "perceptual_lin": "lin.npz"}, "needs --perceptual_network"),
    ({"adversarial_start": 10}, "do nothing without --adversarial_weight"),
    ({"adversarial_weight": 0.1, "adversarial_loss": "wasserstein"}, "no adversarial loss"),
    ({"adversarial_weight": 0.1, "discriminator": "huge"}, "no discriminator config"),
    ({"adversarial_weight": -1.0}, "negative"),
    ({"r1_weight": 10.0}, "do nothing without --adversarial_weight"),
])
def test_train_tokenizer_rejects_loss_options_that_cannot_work(tmp_path, options, message):
    run = train_tokenizer.TokenizerRun("palimix_demo_caption", str(tmp_path), **options)
    with pytest.raises(UsageError, match=message):
        train_tokenizer.train_tokenizer(run)
    assert not list(tmp_path.iterdir())  # refused before anything is read or written


@pytest.mark.slow
def test_train_tokenizer_with_perceptual_and_adversarial_losses(tmp_path, vgg_file, lin_file):
    from palimix.runner.checkpoints import Checkpoints

    out = tmp_path / "tokenizer"
    code = cli.main(["train-tokenizer", "palimix_demo_caption", "--out", str(out), "--steps", "3",
                     "--batch_size", "4", "--eval_images", "4", "--codebook_size", "32", "--no_progress",
                     "--perceptual_weight", "0.5", "--perceptual_network", vgg_file, "--perceptual_lin", lin_file,
                     "--adversarial_weight", "0.1", "--adversarial_start", "1", "--adversarial_loss", "hinge",
                     "--r1_weight", "10"])
    assert code == 0
    result = json.loads((out / "tokenizer.json").read_text())
    settings = result["loss_settings"]
    assert settings["perceptual_weight"] == 0.5 and settings["perceptual_network"] == vgg_file
    assert settings["perceptual_lin"] == lin_file and settings["perceptual_distance"] == "lpips_vgg16"
    assert settings["adversarial_weight"] == 0.1 and settings["adversarial_start"] == 1
    assert settings["adversarial_loss"] == "hinge" and settings["discriminator"] == "tiny"
    assert settings["r1_weight"] == 10.0
    assert set(result["losses"]) == {"loss", "reconstruction_loss", "quantizer_loss", "perceptual_loss",
                                     "generator_adversarial_loss", "discriminator_loss", "r1_penalty"}
    assert all(np.isfinite(v) for v in result["losses"].values())
    # tokenizer.msgpack: the tokenizer alone, in MaskGIT's layout (strict: nothing else in it).
    cfg = vqgan.config("tiny", codebook_size=32)
    params = checkpoints.load_vqgan(str(out / "tokenizer.msgpack"), vqgan.init_params(cfg, jax.random.PRNGKey(9)))
    # The checkpoint: the discriminator's params and optimizer state next to the tokenizer's.
    critic = discriminator.init_params(discriminator.config("tiny"), jax.random.PRNGKey(0), 64)
    store = Checkpoints(str(out), read_only=True)
    try:
        state, _ = store.restore({"params": params, "discriminator": {"params": critic}}, partial=True)
    finally:
        store.close()
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trained = traverse_util.flatten_dict(state["discriminator"]["params"])
    assert trained.keys() == traverse_util.flatten_dict(critic).keys()
    assert any(not np.allclose(np.asarray(trained[k]), np.asarray(v))
               for k, v in traverse_util.flatten_dict(critic).items())


@pytest.mark.slow
def test_default_run_records_l2_only_and_keeps_no_discriminator(tmp_path):
    out = tmp_path / "plain"
    assert cli.main(["train-tokenizer", "palimix_demo_caption", "--out", str(out), "--steps", "2",
                     "--batch_size", "4", "--eval_images", "4", "--codebook_size", "32", "--no_progress"]) == 0
    result = json.loads((out / "tokenizer.json").read_text())
    assert result["loss_settings"] == {"reconstruction": "l2", "perceptual_weight": 0.0, "adversarial_weight": 0.0}
    assert set(result["losses"]) == {"loss", "reconstruction_loss", "quantizer_loss"}
