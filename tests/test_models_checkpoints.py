"""Loading pretrained towers: big_vision ViT .npz files and t5x mT5 checkpoints.

The big_vision side is checked against a reference ViT built from the same flax
layers (nn.Conv, nn.MultiHeadDotProductAttention, nn.LayerNorm, nn.Dense) under the
names big_vision uses; the t5x side against t5x's own T5 network, saved by t5x's
own Checkpointer.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palimix.models import checkpoints, configs, networks, pali, vit
from palimix.models.checkpoints import CheckpointMismatchError

VOCAB = 96


# --- a big_vision-layout reference ViT -------------------------------------------------------


class _RefBlock(nn.Module):
    mlp_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="LayerNorm_0")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="MultiHeadDotProductAttention_0")(y, y)
        y = nn.LayerNorm(name="LayerNorm_1")(x)
        return x + _RefMlp(self.mlp_dim, name="MlpBlock_0")(y)


class _RefMlp(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.mlp_dim, name="Dense_0")(x))
        return nn.Dense(x.shape[-1], name="Dense_1")(h)


@functools.lru_cache(maxsize=None)
def _reference_params_and_fn(cfg):
    """big_vision's ViT (pool_type='none', no head) from flax layers: params tree + forward fn."""
    blocks = [_RefBlock(cfg.mlp_dim, cfg.num_heads) for _ in range(cfg.depth)]
    p = cfg.patch_size
    conv = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID")
    norm = nn.LayerNorm()
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, cfg.image_size, cfg.image_size, 3)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(7), cfg.depth + 3)
    params = {"embedding": jax.jit(conv.init)(keys[0], images)["params"],
              "pos_embedding": 0.1 * jax.random.normal(keys[1], (1, cfg.num_patches, cfg.width)),
              "Transformer": {"encoder_norm": norm.init(keys[2], jnp.zeros((1, cfg.width)))["params"]}}
    x0 = jnp.zeros((1, cfg.num_patches, cfg.width))
    for i, block in enumerate(blocks):
        params["Transformer"][f"encoderblock_{i}"] = jax.jit(block.init)(keys[3 + i], x0)["params"]
        params["Transformer"][f"encoderblock_{i}"]["LayerNorm_0"]["bias"] += 0.1  # not the init values

    def tokens(params, images):
        x = conv.apply({"params": params["embedding"]}, images)
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + params["pos_embedding"]
        for i, block in enumerate(blocks):
            x = block.apply({"params": params["Transformer"][f"encoderblock_{i}"]}, x)
        return norm.apply({"params": params["Transformer"]["encoder_norm"]}, x)

    return params, jax.jit(tokens), images


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out


@pytest.fixture(scope="module")
def tiny():
    config = configs.get("tiny", vocab_size=VOCAB)
    return config, pali.Pali(config), networks.init_params(config, jax.random.PRNGKey(0))


def _vit_tokens(config, params, images):
    return _vit_apply(config.vit)(params["img"], images)


@functools.lru_cache(maxsize=None)
def _vit_apply(vit_config):
    return jax.jit(lambda params, images: vit.VisionTransformer(vit_config).apply({"params": params}, images))


def test_big_vision_npz_loads_and_computes_the_same(tiny, tmp_path):
    config, _, params = tiny
    ref_params, ref_tokens, images = _reference_params_and_fn(config.vit)
    # A SigLIP-style two-tower file: params/img/... next to params/txt/..., plus a head.
    flat = {f"params/img/{k}": v for k, v in _flat(ref_params).items()}
    flat["params/img/head/kernel"] = np.zeros((config.vit.width, 10), np.float32)
    flat["params/txt/Transformer/encoderblock_0/LayerNorm_0/scale"] = np.ones(3, np.float32)
    np.savez(tmp_path / "siglip.npz", **flat)
    loaded = checkpoints.load_vit(f"{tmp_path}/siglip.npz:img", params)
    np.testing.assert_allclose(_vit_tokens(config, loaded, images), ref_tokens(ref_params, images), atol=2e-5)
    # The text side is untouched.
    np.testing.assert_array_equal(loaded["token_embedder"]["embedding"], params["token_embedder"]["embedding"])
    with pytest.raises(CheckpointMismatchError, match=r"sub-models \['img', 'txt'\]"):
        checkpoints.load_vit(str(tmp_path / "siglip.npz"), params)


def test_scanned_old_named_and_low_resolution_vits_load(tiny, tmp_path):
    config, _, params = tiny
    ref_params, ref_tokens, images = _reference_params_and_fn(config.vit)
    flat = _flat(ref_params)
    # big_vision scan=True: one 'encoderblock' with depth-stacked leaves.
    scanned = {k: v for k, v in flat.items() if "encoderblock_" not in k}
    for name in [k for k in flat if k.startswith("Transformer/encoderblock_0/")]:
        rest = name[len("Transformer/encoderblock_0/"):]
        scanned[f"Transformer/encoderblock/{rest}"] = np.stack(
            [flat[f"Transformer/encoderblock_{i}/{rest}"] for i in range(config.vit.depth)])
    np.savez(tmp_path / "scan.npz", **scanned)
    loaded = checkpoints.load_vit(str(tmp_path / "scan.npz"), params)
    np.testing.assert_allclose(_vit_tokens(config, loaded, images), ref_tokens(ref_params, images), atol=2e-5)

    # Pre-2022 files: posemb inside Transformer; a class token's posemb first; pre-linen numbering.
    old = {k.replace("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1")
            .replace("LayerNorm_1", "LayerNorm_2").replace("MlpBlock_0", "MlpBlock_3"): v
           for k, v in flat.items() if k != "pos_embedding"}
    old["Transformer/posembed_input/pos_embedding"] = np.concatenate(
        [np.zeros((1, 1, config.vit.width), np.float32), flat["pos_embedding"]], axis=1)
    np.savez(tmp_path / "old.npz", **old)
    loaded = checkpoints.load_vit(str(tmp_path / "old.npz"), params)
    np.testing.assert_allclose(_vit_tokens(config, loaded, images), ref_tokens(ref_params, images), atol=2e-5)

    # A 32px checkpoint (2x2 grid) into the 64px model (4x4 grid): posemb resampled.
    low = dict(flat, pos_embedding=flat["pos_embedding"][:, :4])
    np.savez(tmp_path / "low.npz", **low)
    loaded = checkpoints.load_vit(str(tmp_path / "low.npz"), params)
    grid = np.asarray(loaded["img"]["pos_embedding"]).reshape(4, 4, -1)
    np.testing.assert_allclose(grid[0, 0], low["pos_embedding"][0, 0], atol=1e-6)  # corners kept
    np.testing.assert_allclose(grid[3, 3], low["pos_embedding"][0, 3], atol=1e-6)


def test_vit_mismatches_are_listed(tiny, tmp_path):
    config, _, params = tiny
    flat = _flat(params["img"])
    flat["embedding/kernel"] = flat["embedding/kernel"][..., :32]  # another width
    np.savez(tmp_path / "wide.npz", **flat)
    with pytest.raises(CheckpointMismatchError) as error:
        checkpoints.load_vit(str(tmp_path / "wide.npz"), params)
    assert "embedding/kernel: checkpoint (16, 16, 3, 32) vs model (16, 16, 3, 64)" in str(error.value)
    partial = {k: v for k, v in _flat(params["img"]).items() if "encoderblock_1" not in k}
    with pytest.raises(CheckpointMismatchError, match="encoderblock_1/LayerNorm_0/scale: not in the checkpoint"):
        checkpoints.load_vit(partial, params)
    with pytest.raises(FileNotFoundError):
        checkpoints.load_vit(str(tmp_path / "missing.npz"), params)


# --- t5x mT5 checkpoints -----------------------------------------------------------------------


def _t5x_network(config):
    network = pytest.importorskip("t5x.examples.t5.network")
    t = config.text
    return network.Transformer(network.T5Config(
        vocab_size=t.vocab_size, emb_dim=t.emb_dim, num_heads=t.num_heads, head_dim=t.head_dim,
        mlp_dim=t.mlp_dim, num_encoder_layers=t.num_encoder_layers, num_decoder_layers=t.num_decoder_layers,
        mlp_activations=t.mlp_activations, dropout_rate=0.0, logits_via_embedding=False,
    ))


def _text_batch():
    rng = np.random.default_rng(1)
    inputs = rng.integers(2, VOCAB, (2, 7)).astype(np.int32)
    inputs[1, 4:] = 0
    targets = rng.integers(2, VOCAB, (2, 5)).astype(np.int32)
    targets[0, 3:] = 0
    return jnp.asarray(inputs), pali.shift_right(jnp.asarray(targets)), jnp.asarray(targets)


def test_t5x_checkpoint_warm_starts_the_text_side(tiny, tmp_path):
    config, model, params = tiny
    t5x_checkpoints = pytest.importorskip("t5x.checkpoints")
    from t5x import adafactor, partitioning, train_state

    network = _t5x_network(config)
    inputs, decoder_inputs, targets = _text_batch()
    variables = jax.jit(functools.partial(network.init, enable_dropout=False))(
        jax.random.PRNGKey(3), inputs, decoder_inputs, targets)
    state = train_state.FlaxOptimTrainState.create(adafactor.Adafactor(), variables)
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    t5x_checkpoints.Checkpointer(state, partitioner, str(tmp_path)).save(state)
    assert os.path.exists(tmp_path / "checkpoint_0" / "checkpoint")

    loaded = checkpoints.load_mt5(str(tmp_path), params)  # the model dir: latest step
    np.testing.assert_array_equal(loaded["img"]["embedding"]["kernel"], params["img"]["embedding"]["kernel"])
    expected = jax.jit(functools.partial(network.apply, enable_dropout=False))(variables, inputs, decoder_inputs, targets)
    apply = jax.jit(lambda p, *args: model.apply({"params": p}, *args, enable_dropout=False))
    ours = apply(loaded, None, None, inputs, decoder_inputs, targets)
    real = np.asarray(targets) > 0  # t5x also masks padded query rows; compare real positions
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(expected)[real], atol=1e-4)
    # With images, the blank (masked) image changes nothing either.
    s = config.vit.image_size
    ours = apply(loaded, jnp.zeros((2, s, s, 3)), jnp.zeros((2,), jnp.int32), inputs, decoder_inputs, targets)
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(expected)[real], atol=1e-4)


def test_orbax_checkpoint_and_param_dicts_load(tiny, tmp_path):
    config, _, params = tiny
    import orbax.checkpoint as ocp

    text = {k: v for k, v in params.items() if k not in ("img", "img_proj")}
    text = jax.tree_util.tree_map(lambda x: x + 1.0, text)
    ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_7" / "state"), {"target": text, "state": {"step": 7}})
    loaded = checkpoints.load_mt5(str(tmp_path), params)
    np.testing.assert_allclose(loaded["encoder"]["layers_0"]["mlp"]["wo"]["kernel"],
                               params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"] + 1.0)
    # The flattened dict layout t5x uses ('target/encoder/...').
    flat = {f"target/{k}": v for k, v in _flat(text).items()}
    loaded = checkpoints.load_mt5(flat, params)
    np.testing.assert_allclose(loaded["decoder"]["logits_dense"]["kernel"],
                               params["decoder"]["logits_dense"]["kernel"] + 1.0)


def test_another_vocabulary_is_a_clear_error_or_skipped(tiny):
    config, _, params = tiny
    # A checkpoint with twice the vocabulary (and other values elsewhere).
    other = jax.tree_util.tree_map(lambda x: x * 2.0, {k: v for k, v in params.items() if k not in ("img", "img_proj")})
    other["token_embedder"]["embedding"] = jnp.tile(other["token_embedder"]["embedding"], (2, 1))
    other["decoder"]["logits_dense"]["kernel"] = jnp.tile(other["decoder"]["logits_dense"]["kernel"], (1, 2))
    text = other
    with pytest.raises(CheckpointMismatchError, match="another vocabulary"):
        checkpoints.load_mt5(text, params)
    loaded = checkpoints.load_mt5(text, params, skip=("token_embedder/.*", "decoder/logits_dense/.*"))
    np.testing.assert_array_equal(loaded["token_embedder"]["embedding"], params["token_embedder"]["embedding"])
    np.testing.assert_array_equal(loaded["encoder"]["encoder_norm"]["scale"], other["encoder"]["encoder_norm"]["scale"])
    with pytest.raises(CheckpointMismatchError, match="no t5x checkpoint"):
        checkpoints.load_mt5(os.path.dirname(__file__) + "/data", params)
