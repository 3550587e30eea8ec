"""LoRA on the language model (palimix.models.lora): adapters on the chosen projections
of the mT5 encoder-decoder and of Gemma, zero at the start, merged into the frozen
weights with the same logits (also through `palimix export --merge_lora`), and the
mBLIP preset that trains only the adapters and the bridge."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palimix.errors import UsageError
from palimix.models import configs, lora, networks, trainable

ALL = list(configs.LORA_TARGETS)
# Encoder-decoder; decoder-only with grouped-query (q_einsum + kv_einsum) and with plain
# multi-head attention (one qkv_einsum): every merge site.
NETWORKS = [("tiny", {}), ("tiny_decoder", {"llm_num_kv_heads": 2}), ("tiny_decoder", {"llm_num_kv_heads": 4})]


@functools.lru_cache(maxsize=None)
def _apply(config):
    network = networks.build(config)
    return jax.jit(lambda p, b: network.apply({"params": p}, *networks.inputs(network, b), enable_dropout=False))


def _logits(config, params, batch):
    return np.asarray(_apply(config)(params, batch))


def _batch(config):
    batch = networks.dummy_batch(config, 2, {"inputs": 6, "targets": 5})
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, batch["encoder_images"].shape).astype(np.float32)
    tokens = {k: jnp.asarray(rng.integers(1, 100, v.shape), jnp.int32) for k, v in batch.items()
              if k.endswith("_tokens")}
    return dict(batch, encoder_images=jnp.asarray(images), **tokens)


def _randomize_adapters(params, seed=1):
    """Nonzero B (training has moved it), so the merge has something to fold in."""
    rng = np.random.default_rng(seed)

    def fill(path, value):
        if lora._is_adapter_param("/".join(k.key for k in path)):
            return jnp.asarray(rng.normal(scale=0.05, size=value.shape), value.dtype)
        return value

    return jax.tree_util.tree_map_with_path(fill, params)


def _scale(config):
    return lora.config_of(getattr(config, configs.FAMILIES[configs.family_of(config)].language_field)).scale


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", NETWORKS)
def test_merged_logits_equal_the_adapted_ones(name, overrides):
    config = configs.get(name, lora_targets=ALL, lora_rank=2, lora_alpha=4.0, **overrides)
    plain = lora.without_lora(config)
    initial = networks.init_params(config, jax.random.PRNGKey(0))
    batch = _batch(config)
    # B starts at zero: the adapted network computes what its base weights alone do.
    np.testing.assert_allclose(_logits(plain, lora.merge(initial, 0.0), batch), _logits(config, initial, batch),
                               atol=1e-6, rtol=0)
    params = _randomize_adapters(initial)
    adapted = _logits(config, params, batch)
    merged = lora.merge(params, _scale(config))
    assert not any("lora_" in n for n in trainable.flat_names(merged))
    np.testing.assert_allclose(_logits(plain, merged, batch), adapted, atol=1e-5, rtol=0)
    # The adapters did change the logits: the base weights alone give others.
    assert np.abs(_logits(plain, lora.merge(params, 0.0), batch) - adapted).max() > 1e-3


@pytest.mark.parametrize("name,overrides", NETWORKS)
def test_adapters_sit_beside_the_chosen_targets(name, overrides):
    config = configs.get(name, lora_targets=["q", "v", "wi_1", "wo"], lora_rank=3, **overrides)
    shapes = jax.eval_shape(lambda: networks.init_params(config, jax.random.PRNGKey(0)))
    names = trainable.flat_names(shapes)
    adapters = sorted({n.split("/")[-2] for n in names if lora._is_adapter_param(n)})
    assert adapters == ["lora_q", "lora_v", "lora_wi_1", "lora_wo"]
    layer = "encoder/layers_0/attention" if name == "tiny" else "llm/layers_0/attn"
    assert f"{layer}/lora_q/a" in names and f"{layer}/lora_k/a" not in names
    flat = dict(zip(names, jax.tree_util.tree_leaves(shapes)))
    assert flat[f"{layer}/lora_q/a"].shape == (64, 3)


def test_mblip_selection_trains_only_adapters_and_bridge():
    config = configs.get("tiny", bridge="qformer", qformer_depth=2, qformer_width=32, qformer_num_heads=4,
                         qformer_mlp_dim=48, lora_targets=ALL)
    shapes = jax.eval_shape(lambda: networks.init_params(config, jax.random.PRNGKey(0)))
    mask = trainable.ParamSelection(trainable=lora.MBLIP_TRAINABLE).mask(shapes)
    names = trainable.flat_names(shapes)
    trained = [n for n, m in zip(names, jax.tree_util.tree_leaves(mask)) if m]
    assert trained and all(lora._is_adapter_param(n) or n.split("/")[0] in ("query_tokens", "qformer",
                                                                            "language_projection") for n in trained)
    assert not any(n.startswith(("img/", "encoder/", "decoder/", "token_embedder/")) and not
                   lora._is_adapter_param(n) for n in trained)


def test_config_checks():
    with pytest.raises(UsageError, match="lora_targets"):
        configs.get("tiny", lora_targets=["query"])
    with pytest.raises(UsageError, match="one `wi`"):
        configs.get("tiny", lora_targets=["wi_0"], mlp_activations=["relu"])
    assert configs.get("tiny", lm_lora_targets=["q"]).text.lora_targets == ("q",)
    with pytest.raises(UsageError, match="no LoRA adapters"):
        lora.merge({"encoder": {"x": {"kernel": np.zeros((2, 2))}}}, 1.0)


def _write_run(model_dir, definition, params, step=7):
    """A model dir as `palimix train` leaves it: run.json, train_config.json and an orbax
    checkpoint of the parameters (what load_run reads)."""
    from palimix.runner.checkpoints import Checkpoints

    os.makedirs(model_dir)
    description = {"model": definition.to_json(), "mixture_or_task_name": "palimix_demo",
                   "task_feature_lengths": {"inputs": 6, "targets": 5, "image": 64}, "seed": 0, "batch_size": 2,
                   "input_mode": "memory"}
    with open(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump(json.loads(json.dumps(description)), f)
    with open(os.path.join(model_dir, "train_config.json"), "w") as f:
        json.dump({"batch_size": 2}, f)
    checkpoints = Checkpoints(str(model_dir))
    checkpoints.save(step, {"step": jnp.asarray(step, jnp.int32), "params": params}, None, {"loss": 1.0})
    checkpoints.close()


@pytest.mark.slow
def test_export_merge_lora_writes_a_plain_run_with_the_same_logits(tmp_path):
    from palimix import cli
    from palimix.runner.loading import load_run
    from palimix.runner.model import ModelDefinition

    definition = ModelDefinition.create("tiny", {"lm_lora_targets": ALL, "lora_rank": 2},
                                        trainable.ParamSelection(trainable=[lora.TRAINABLE_PATTERN]))
    params = _randomize_adapters(networks.init_params(definition.config, jax.random.PRNGKey(0)))
    run_dir, out_dir = str(tmp_path / "run"), str(tmp_path / "merged")
    _write_run(run_dir, definition, params)
    assert cli.main(["export", "--merge_lora", run_dir, out_dir]) == 0
    merged = load_run(out_dir)
    recorded = json.load(open(os.path.join(out_dir, "run.json")))["model"]
    assert recorded["overrides"] == {}  # lm_lora_targets and lora_rank are gone with the adapters
    assert merged.trainer.definition.config == lora.without_lora(definition.config)
    assert merged.trainer.definition.trainable == trainable.ParamSelection()
    assert merged.step == 7
    batch = _batch(definition.config)
    np.testing.assert_allclose(_logits(merged.trainer.definition.config, merged.params, batch),
                               _logits(definition.config, params, batch), atol=1e-5, rtol=0)
    # A second export into the same folder, or of a run without adapters, is refused.
    assert cli.main(["export", "--merge_lora", run_dir, out_dir]) == 2
    assert cli.main(["export", "--merge_lora", out_dir, str(tmp_path / "again")]) == 2


@pytest.fixture
def clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def test_gin_preset_and_mt0_xl_size(clean_gin):
    """models/mblip_lora.gin + sizes/mblip_mt0_xl.gin: the runner's model definition is
    ViT-g/14 + Q-Former + mT0-XL with LoRA everywhere, training only adapters and bridge
    (about 124M of 4.85B parameters, as mBLIP reports for mT0-XL)."""
    from palimix.runner import model as model_lib
    from palimix.runner.config import parse_gin

    parse_gin(["models/network.gin", "models/mblip_lora.gin", "sizes/mblip_mt0_xl.gin"], [])
    definition = model_lib.from_gin()
    config = definition.config
    assert (config.bridge, config.num_image_tokens, config.vit.width, config.vit.depth) == ("qformer", 32, 1408, 39)
    assert config.text.emb_dim == 2048 and config.text.lora_targets == tuple(ALL) and config.text.lora_dropout == 0.05
    assert definition.trainable.trainable == lora.MBLIP_TRAINABLE
    shapes = jax.eval_shape(lambda: networks.init_params(config, jax.random.PRNGKey(0)))
    mask = definition.trainable.mask(shapes)
    sizes = [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)]
    trained = sum(s for s, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m)
    assert 120e6 < trained < 130e6 and 4.8e9 < sum(sizes) < 4.9e9
