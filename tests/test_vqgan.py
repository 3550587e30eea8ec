"""The VQGAN image tokenizer: MaskGIT's parameter layout, its math, its checkpoints.

The reference here is independent of palimix's module: the MaskGIT parameter names and
shapes are enumerated from `maskgit/nets/vqgan_tokenizer.py`'s structure, a checkpoint
file is written in MaskGIT's format (flax msgpack of {"params": ...}) with random
weights, and the network's math (GroupNorm with 32 groups by default, swish, SAME 3x3
convs, average-pool down / nearest up sampling, the shortcut conv on the block's output,
nearest-code argmin) is recomputed in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization, traverse_util

from palimix.errors import UsageError
from palimix.models import checkpoints, vqgan
from palimix.models.checkpoints import CheckpointMismatchError

# Small: stride 2 (a 4x4 grid on 8x8 images), a channel change in both towers.
CFG = vqgan.config("tiny", codebook_size=8, embedding_dim=4, filters=8, num_res_blocks=1,
                   channel_multipliers=(1, 2), norm_groups=4, image_size=8)


# --- MaskGIT's names, enumerated from its module structure ---------------------------------


def _resblock_shapes(cin, cout):
    shapes = {"GroupNorm_0/scale": (cin,), "GroupNorm_0/bias": (cin,), "Conv_0/kernel": (3, 3, cin, cout),
              "GroupNorm_1/scale": (cout,), "GroupNorm_1/bias": (cout,), "Conv_1/kernel": (3, 3, cout, cout)}
    if cin != cout:
        shapes["Conv_2/kernel"] = (1, 1, cout, cout)
    return shapes


def maskgit_shapes(cfg):
    """{"encoder/...": shape} as MaskGIT's VQVAE (quantizer "vq", norm "GN") names them."""
    out, blocks = {"encoder/Conv_0/kernel": (3, 3, 3, cfg.filters)}, 0
    c = cfg.filters
    for m in list(cfg.channel_multipliers) + [cfg.channel_multipliers[-1]]:
        for _ in range(cfg.num_res_blocks):
            out.update({f"encoder/ResBlock_{blocks}/{k}": s for k, s in _resblock_shapes(c, cfg.filters * m).items()})
            c, blocks = cfg.filters * m, blocks + 1
    out.update({"encoder/GroupNorm_0/scale": (c,), "encoder/GroupNorm_0/bias": (c,),
                "encoder/Conv_1/kernel": (1, 1, c, cfg.embedding_dim), "encoder/Conv_1/bias": (cfg.embedding_dim,)})
    c = cfg.filters * cfg.channel_multipliers[-1]
    out.update({"decoder/Conv_0/kernel": (3, 3, cfg.embedding_dim, c), "decoder/Conv_0/bias": (c,)})
    blocks, convs = 0, 1
    for i in [None] + list(reversed(range(len(cfg.channel_multipliers)))):  # None: the middle blocks
        width = cfg.filters * cfg.channel_multipliers[-1 if i is None else i]
        for _ in range(cfg.num_res_blocks):
            out.update({f"decoder/ResBlock_{blocks}/{k}": s for k, s in _resblock_shapes(c, width).items()})
            c, blocks = width, blocks + 1
        if i is not None and i > 0:  # the upsampling conv after each stage but the last
            out.update({f"decoder/Conv_{convs}/kernel": (3, 3, c, c), f"decoder/Conv_{convs}/bias": (c,)})
            convs += 1
    out.update({"decoder/GroupNorm_0/scale": (c,), "decoder/GroupNorm_0/bias": (c,),
                f"decoder/Conv_{convs}/kernel": (3, 3, c, 3), f"decoder/Conv_{convs}/bias": (3,),
                "quantizer/codebook": (cfg.codebook_size, cfg.embedding_dim)})
    return out


def random_maskgit_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in maskgit_shapes(cfg).items():
        fan_in = np.prod(shape[:-1]) if name.endswith("kernel") else 1
        scale = 1.0 / np.sqrt(fan_in) if name.endswith("kernel") else 0.5
        base = 1.0 if name.endswith("scale") else 0.0
        flat[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return flat


def write_maskgit_checkpoint(path, flat):
    """The bytes MaskGIT's tokenizer checkpoints hold: flax.serialization.to_bytes(variables)."""
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    path.write_bytes(serialization.msgpack_serialize({"params": nested}))
    return str(path)


# --- the math in numpy -----------------------------------------------------------------------


def np_conv(x, p, name):
    kernel = p[f"{name}/kernel"]
    k = kernel.shape[0]
    padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))  # B,H,W,C,k,k
    y = np.einsum("bhwcij,ijco->bhwo", windows, kernel)
    return y + p.get(f"{name}/bias", 0.0)


def np_group_norm(x, p, name, groups):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + 1e-6)
    return g.reshape(x.shape) * p[f"{name}/scale"] + p[f"{name}/bias"]


def np_swish(x):
    return x / (1.0 + np.exp(-x))


def np_resblock(x, p, name, groups):
    y = x
    for i in range(2):
        y = np_conv(np_swish(np_group_norm(y, p, f"{name}/GroupNorm_{i}", groups)), p, f"{name}/Conv_{i}")
    shortcut = np_conv(y, p, f"{name}/Conv_2") if f"{name}/Conv_2/kernel" in p else x
    return y + shortcut


def np_decode(codes, p, cfg):
    """codes [B, h, w] -> images in [-1, 1] scale (MaskGIT's decoder output * 2 - 1)."""
    x = np_conv(p["quantizer/codebook"][codes], p, "decoder/Conv_0")
    blocks, convs = 0, 1
    for i in [None] + list(reversed(range(len(cfg.channel_multipliers)))):
        for _ in range(cfg.num_res_blocks):
            x, blocks = np_resblock(x, p, f"decoder/ResBlock_{blocks}", cfg.norm_groups), blocks + 1
        if i is not None and i > 0:
            x = np_conv(x.repeat(2, axis=1).repeat(2, axis=2), p, f"decoder/Conv_{convs}")
            convs += 1
    x = np_swish(np_group_norm(x, p, "decoder/GroupNorm_0", cfg.norm_groups))
    return np_conv(x, p, f"decoder/Conv_{convs}") * 2.0 - 1.0


def np_encode(images, p, cfg):
    x = np_conv((images + 1.0) / 2.0, p, "encoder/Conv_0")
    blocks, stages = 0, len(cfg.channel_multipliers)
    for i in list(range(stages)) + [None]:
        for _ in range(cfg.num_res_blocks):
            x, blocks = np_resblock(x, p, f"encoder/ResBlock_{blocks}", cfg.norm_groups), blocks + 1
        if i is not None and i < stages - 1:
            b, h, w, c = x.shape
            x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    z = np_conv(np_swish(np_group_norm(x, p, "encoder/GroupNorm_0", cfg.norm_groups)), p, "encoder/Conv_1")
    distances = ((z[..., None, :] - p["quantizer/codebook"]) ** 2).sum(-1)
    return distances.argmin(-1), distances


# --- tests -------------------------------------------------------------------------------------


def test_configs_give_strides_and_grids():
    maskgit = vqgan.config("maskgit")
    assert (maskgit.codebook_size, maskgit.stride, maskgit.grid_size, maskgit.embedding_dim) == (1024, 16, 16, 256)
    assert vqgan.config("maskgit", stride=8).channel_multipliers == (1, 1, 2, 2)
    assert vqgan.config("tiny", stride=8).channel_multipliers == (1, 2, 2, 2)
    assert vqgan.config("tiny", codebook_size=32).codebook_size == 32
    with pytest.raises(UsageError, match="power of two"):
        vqgan.config("tiny", stride=6)
    with pytest.raises(UsageError, match="multiple of the VQGAN stride"):
        vqgan.config("tiny", image_size=62)
    with pytest.raises(UsageError, match="norm_groups"):
        vqgan.config("tiny", filters=12)
    with pytest.raises(UsageError, match="no VQGAN config"):
        vqgan.config("huge")


@pytest.mark.parametrize("cfg", [CFG, vqgan.config("tiny"), vqgan.config("maskgit")], ids=["test", "tiny", "maskgit"])
def test_parameter_names_and_shapes_are_maskgits(cfg):
    shapes = jax.eval_shape(lambda: vqgan.init_params(cfg, jax.random.PRNGKey(0)))
    flat = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
    assert flat == maskgit_shapes(cfg)


@pytest.fixture(scope="module")
def fresh():
    return vqgan.init_params(CFG, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, fresh):
    flat = random_maskgit_params(CFG)
    path = write_maskgit_checkpoint(tmp_path_factory.mktemp("maskgit") / "tokenizer_checkpoint", flat)
    params = checkpoints.load_vqgan(path, fresh)
    return flat, params


def test_load_vqgan_reads_every_parameter(loaded):
    flat, params = loaded
    got = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    assert got.keys() == flat.keys()
    for name, value in flat.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_decode_of_known_codes_matches_the_numpy_math(loaded):
    flat, params = loaded
    codes = np.arange(2 * 4 * 4).reshape(2, 4, 4) % CFG.codebook_size
    model = vqgan.Vqgan(CFG)
    images = model.apply({"params": params}, jnp.asarray(codes), method=model.decode)
    assert images.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(images), np_decode(codes, flat, CFG), rtol=1e-4, atol=1e-4)


def test_encode_matches_the_numpy_math_and_round_trips(loaded):
    flat, params = loaded
    images = np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    model = vqgan.Vqgan(CFG)
    codes = np.asarray(model.apply({"params": params}, jnp.asarray(images), method=model.encode))
    expected, distances = np_encode(images, flat, CFG)
    assert codes.shape == (2, 4, 4) and codes.dtype == np.int32
    # Equal wherever the nearest code is not a near tie (float rounding may pick either).
    gap = np.sort(distances, axis=-1)[..., 1] - np.sort(distances, axis=-1)[..., 0]
    assert (gap > 1e-4).mean() > 0.9
    np.testing.assert_array_equal(codes[gap > 1e-4], expected[gap > 1e-4])
    # Training forward: reconstruction is the decode of the same codes.
    reconstruction, train_codes, _ = model.apply({"params": params}, jnp.asarray(images))
    np.testing.assert_array_equal(np.asarray(train_codes), codes)
    decoded = model.apply({"params": params}, jnp.asarray(codes), method=model.decode)
    np.testing.assert_allclose(np.asarray(reconstruction), np.asarray(decoded), rtol=1e-5, atol=1e-5)


def test_load_vqgan_reports_missing_and_misshaped_parameters(tmp_path, fresh):
    flat = random_maskgit_params(CFG)
    del flat["decoder/Conv_0/bias"]
    flat["quantizer/codebook"] = np.zeros((16, CFG.embedding_dim), np.float32)
    path = write_maskgit_checkpoint(tmp_path / "bad", flat)
    with pytest.raises(CheckpointMismatchError, match=r"decoder/Conv_0/bias: not in the checkpoint") as e:
        checkpoints.load_vqgan(path, fresh)
    assert "quantizer/codebook: checkpoint (16, 4) vs model (8, 4)" in str(e.value)
    (tmp_path / "text").write_text("not msgpack")
    with pytest.raises(CheckpointMismatchError, match="not a flax msgpack checkpoint|holds a"):
        checkpoints.load_vqgan(str(tmp_path / "text"), fresh)


@pytest.mark.slow
def test_straight_through_training_lowers_the_loss(fresh):
    model = vqgan.Vqgan(CFG)
    params = fresh
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
    grad_fn = jax.jit(jax.value_and_grad(lambda p: vqgan.losses(model, p, images), has_aux=True))
    (_, parts), grads = grad_fn(params)
    # The decoder's gradient reaches the encoder through the argmin (straight through).
    assert float(jnp.abs(grads["encoder"]["Conv_0"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["quantizer"]["codebook"]).sum()) > 0
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)
    first = float(parts["reconstruction_loss"])
    for _ in range(20):
        (_, parts), grads = grad_fn(params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(parts["reconstruction_loss"]) < first


def test_psnr():
    images = jnp.zeros((2, 4, 4, 3))
    assert float(vqgan.psnr(images, images)) == pytest.approx(100.0)
    # [0, 1] pixels off by 0.1 everywhere: 10 log10(1 / 0.01) = 20 dB.
    assert float(vqgan.psnr(images, images + 0.2)) == pytest.approx(20.0, abs=1e-4)
