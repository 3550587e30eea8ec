"""The Q-Former bridge (palimix.models.qformer): configs, both networks, and loading a
converted BLIP-2 / mBLIP checkpoint with Hugging Face names (checkpoints.load_qformer),
checked against a numpy reference of the math written from those names."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palimix.errors import UsageError
from palimix.models import checkpoints, configs, networks, qformer

# Small enough for CPU; depth 3 with cross-attention every 2nd layer: layers 0 and 2.
SMALL = dict(bridge="qformer", qformer_num_queries=4, qformer_depth=3, qformer_width=32, qformer_num_heads=4,
             qformer_mlp_dim=48)
VIT_WIDTH = configs.VIT_VARIANTS["tiny"][0]
LM_WIDTH = configs.TEXT_SIZES["tiny"][0]


def hf_checkpoint(cfg: configs.QFormerConfig, vit_width: int, lm_width: int, seed: int = 0) -> dict:
    """Random weights under Hugging Face's Blip2ForConditionalGeneration names and shapes
    (Linear weights [out, in]), plus keys of the other towers that load_qformer leaves alone."""
    rng = np.random.default_rng(seed)
    flat = {"query_tokens": rng.normal(size=(1, cfg.num_queries, cfg.width))}

    def linear(name, n_in, n_out):
        flat[f"{name}.weight"] = rng.normal(scale=n_in ** -0.5, size=(n_out, n_in))
        flat[f"{name}.bias"] = rng.normal(scale=0.1, size=(n_out,))

    def layer_norm(name):
        flat[f"{name}.weight"] = 1 + rng.normal(scale=0.1, size=(cfg.width,))
        flat[f"{name}.bias"] = rng.normal(scale=0.1, size=(cfg.width,))

    layer_norm("qformer.layernorm")
    for i in range(cfg.depth):
        blocks = [("attention", cfg.width)] + ([("crossattention", vit_width)] if i % 2 == 0 else [])
        for block, kv_width in blocks:
            prefix = f"qformer.encoder.layer.{i}.{block}"
            linear(f"{prefix}.attention.query", cfg.width, cfg.width)
            linear(f"{prefix}.attention.key", kv_width, cfg.width)
            linear(f"{prefix}.attention.value", kv_width, cfg.width)
            linear(f"{prefix}.output.dense", cfg.width, cfg.width)
            layer_norm(f"{prefix}.output.LayerNorm")
        linear(f"qformer.encoder.layer.{i}.intermediate_query.dense", cfg.width, cfg.mlp_dim)
        linear(f"qformer.encoder.layer.{i}.output_query.dense", cfg.mlp_dim, cfg.width)
        layer_norm(f"qformer.encoder.layer.{i}.output_query.LayerNorm")
    linear("language_projection", cfg.width, lm_width)
    flat = {k: v.astype(np.float32) for k, v in flat.items()}
    flat["vision_model.post_layernorm.weight"] = np.ones((vit_width,), np.float32)
    flat["language_model.shared.weight"] = np.zeros((8, lm_width), np.float32)
    return flat


# --- a numpy reference of BLIP-2's query path, reading the HF-named weights ----------

def _linear(w, name, x):
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _layer_norm(w, name, x, eps=1e-12):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _attention(w, name, x, kv, heads):
    def split(t):
        return t.reshape(t.shape[:-1] + (heads, -1)).transpose(0, 2, 1, 3)

    q, k, v = (split(_linear(w, f"{name}.attention.{p}", src)) for p, src in (("query", x), ("key", kv), ("value", kv)))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    return _layer_norm(w, f"{name}.output.LayerNorm", _linear(w, f"{name}.output.dense", ctx) + x)


def reference_bridge(w, vit_tokens, cfg):
    from scipy.special import erf

    x = np.broadcast_to(w["query_tokens"], (vit_tokens.shape[0],) + w["query_tokens"].shape[1:])
    x = _layer_norm(w, "qformer.layernorm", x)
    for i in range(cfg.depth):
        prefix = f"qformer.encoder.layer.{i}"
        x = _attention(w, f"{prefix}.attention", x, x, cfg.num_heads)
        if i % cfg.cross_attention_every == 0:
            x = _attention(w, f"{prefix}.crossattention", x, vit_tokens, cfg.num_heads)
        h = _linear(w, f"{prefix}.intermediate_query.dense", x)
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = _layer_norm(w, f"{prefix}.output_query.LayerNorm", _linear(w, f"{prefix}.output_query.dense", h) + x)
    return _linear(w, "language_projection", x)


@pytest.fixture(scope="module")
def config():
    return configs.get("tiny", **SMALL)


@pytest.fixture(scope="module")
def params(config):
    return networks.init_params(config, jax.random.PRNGKey(0))


def _bridge_output(config, params, vit_tokens):
    bridge = qformer.QFormerBridge(config.qformer, config.text.emb_dim)
    return np.asarray(bridge.apply({"params": {k: params[k] for k in qformer.BRIDGE_PARAMS}}, vit_tokens))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_load_hf_checkpoint_matches_reference(tmp_path, config, params, suffix):
    from safetensors.numpy import save_file

    weights = hf_checkpoint(config.qformer, VIT_WIDTH, LM_WIDTH)
    path = str(tmp_path / f"blip2{suffix}")
    save_file(weights, path) if suffix == ".safetensors" else np.savez(path, **weights)
    loaded = checkpoints.load_qformer(path, params)
    # The rest of the network is untouched.
    np.testing.assert_array_equal(loaded["img"]["embedding"]["kernel"], params["img"]["embedding"]["kernel"])
    vit_tokens = np.random.default_rng(1).normal(size=(2, 16, VIT_WIDTH)).astype(np.float32)
    ours = _bridge_output(config, loaded, vit_tokens)
    expected = reference_bridge({k: v.astype(np.float64) for k, v in weights.items()}, vit_tokens, config.qformer)
    assert ours.shape == (2, config.qformer.num_queries, LM_WIDTH)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=2e-4)


def test_load_errors_name_the_keys(config, params):
    weights = hf_checkpoint(config.qformer, VIT_WIDTH, LM_WIDTH)
    missing = {k: v for k, v in weights.items() if k != "qformer.encoder.layer.2.crossattention.attention.key.bias"}
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match="qformer/encoder/layer/2/crossattention/attention/key/bias: not in the checkpoint"):
        checkpoints.load_qformer(missing, params)
    # Layer 1 has no cross-attention (every 2nd layer): a key for it is extra.
    extra = dict(weights, **{"qformer.encoder.layer.1.crossattention.attention.query.bias": np.zeros(32, np.float32)})
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match="layer/1/crossattention/attention/query/bias: in the checkpoint"):
        checkpoints.load_qformer(extra, params)
    bad = dict(weights, **{"language_projection.weight": np.zeros((LM_WIDTH + 1, 32), np.float32)})
    with pytest.raises(checkpoints.CheckpointMismatchError, match=r"language_projection/kernel: checkpoint \(32, 65\)"):
        checkpoints.load_qformer(bad, params)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="holds no Q-Former"):
        checkpoints.load_qformer({"vision_model.x.weight": np.zeros(3)}, params)
    linear_params = jax.eval_shape(lambda: networks.init_params(configs.get("tiny"), jax.random.PRNGKey(0)))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="bridge='qformer'"):
        checkpoints.load_qformer(weights, linear_params)


def test_hf_names():
    assert checkpoints.hf_bridge_name("qformer.encoder.layer.3.attention.output.LayerNorm.weight") == (
        "qformer/encoder/layer/3/attention/output/LayerNorm/scale", False)
    assert checkpoints.hf_bridge_name("language_projection.weight") == ("language_projection/kernel", True)
    assert checkpoints.hf_bridge_name("query_tokens") == ("query_tokens", False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "tiny_decoder"])
def test_networks_see_the_query_tokens(name):
    config = configs.get(name, **SMALL)
    assert config.num_image_tokens == 4 and configs.get(name).num_image_tokens == 16
    assert configs.from_dict(configs.to_dict(config)) == config
    params = networks.init_params(config, jax.random.PRNGKey(0))
    assert "img_proj" not in params and "head" not in params["img"]
    network = networks.build(config)
    batch = networks.dummy_batch(config, 2, {"inputs": 6, "targets": 4})
    apply = jax.jit(lambda b: network.apply({"params": params}, *networks.inputs(network, b), enable_dropout=False))
    blank = dict(batch, encoder_image_mask=jnp.array([1, 0], jnp.int32))
    logits = apply(blank)
    assert logits.shape[0] == 2 and np.isfinite(np.asarray(logits)).all()
    # A blank image's query tokens are masked out: its logits do not depend on the image.
    logits2 = apply(dict(blank, encoder_images=blank["encoder_images"] + 0.5))
    np.testing.assert_allclose(logits2[1], logits[1], atol=1e-5)
    assert not np.allclose(logits2[0], logits[0], atol=1e-5)


def test_config_checks():
    assert configs.get("tiny").bridge == "linear"
    defaults = configs.get("tiny", bridge="qformer").qformer
    assert (defaults.num_queries, defaults.depth, defaults.width, defaults.num_heads) == (32, 12, 768, 12)
    with pytest.raises(UsageError, match="bridge='mlp'"):
        configs.get("tiny", bridge="mlp")
    with pytest.raises(UsageError, match="not divisible"):
        configs.get("tiny", bridge="qformer", qformer_num_heads=5)
    with pytest.raises(UsageError, match="qformer_num_queries"):
        configs.get("tiny", bridge="qformer", max_image_tokens=4)
    counts = networks.count_params("tiny", **SMALL)
    assert counts["img_proj"] == sum(int(np.prod(v.shape)) for v in hf_checkpoint(
        configs.get("tiny", **SMALL).qformer, VIT_WIDTH, LM_WIDTH).values()) - VIT_WIDTH - 8 * LM_WIDTH


def test_from_scratch_init_passes_the_image_on():
    """init_std=None (fan-in kernels, unit queries): the bridge's output depends on the
    image from the start; with BLIP-2's normal(0.02) it hardly does (the demo's
    Q-Former, trained from scratch, stayed near that)."""
    images = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 64))

    def spread(init_std):
        cfg = configs.QFormerConfig(16, 2, 64, 4, 128, 2, init_std=init_std)
        bridge = qformer.QFormerBridge(cfg, lm_width=64)
        out = bridge.apply(bridge.init(jax.random.PRNGKey(0), images), images)
        return float(jnp.std(out, axis=0).mean() / jnp.std(out))

    assert spread(0.02) < 0.02 and spread(None) > 0.2
    assert configs.get("tiny", bridge="qformer", qformer_init_std=None).qformer.init_std is None
