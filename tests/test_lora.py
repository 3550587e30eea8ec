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
# Scanned layers stack adapters and weights on a leading depth axis (scan_layers).
NETWORKS = [("tiny", {}), ("tiny_decoder", {"llm_num_kv_heads": 2}), ("tiny_decoder", {"llm_num_kv_heads": 4}),
            ("tiny", {"scan_layers": True}), ("tiny_decoder", {"llm_num_kv_heads": 4, "scan_layers": True})]


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
    scanned = overrides.get("scan_layers", False)
    stack = "layers" if scanned else "layers_0"
    layer = f"encoder/{stack}/attention" if name == "tiny" else f"llm/{stack}/attn"
    assert f"{layer}/lora_q/a" in names and f"{layer}/lora_k/a" not in names
    flat = dict(zip(names, jax.tree_util.tree_leaves(shapes)))
    # Scanned: one adapter per layer, stacked like the weights.
    depth = config.text.num_encoder_layers if name == "tiny" else config.llm.depth
    assert flat[f"{layer}/lora_q/a"].shape == ((depth,) if scanned else ()) + (64, 3)


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


@pytest.mark.t5x
def test_t5x_rules_cover_the_mblip_network():
    """Q-Former, adapters and int8 weights only use logical axes T5X's partitioner and
    Adafactor have rules for."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    from flax.linen import partitioning as flax_partitioning
    from t5x import adafactor

    from palimix.models import t5x_model

    config = configs.get("tiny", bridge="qformer", qformer_depth=2, qformer_width=32, qformer_num_heads=4,
                         qformer_mlp_dim=48, lora_targets=ALL, int8_kernels=True)
    axes = jax.eval_shape(lambda: networks.init_variables(config, jax.random.PRNGKey(0)))["params_axes"]
    specs = jax.tree_util.tree_leaves(flax_partitioning.get_axis_names(axes),
                                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    names = {name for spec in specs for name in spec}
    assert {"lora_rank", "vit_embed", "joined_kv"} <= names
    assert names <= set(dict(t5x_model.pali_logical_axis_rules()))
    factor_rules = t5x_model.pali_logical_factor_rules()
    assert names <= set(factor_rules)
    optimizer = adafactor.Adafactor(logical_factor_rules=factor_rules)
    optimizer.set_param_axes(flax_partitioning.get_axis_names(axes))
    assert optimizer.hyper_params.factor_map


@pytest.mark.slow
def test_palimix_train_then_export_merge_lora(tmp_path, clean_gin):
    """The real path: `palimix train` with models/mblip_lora.gin (a small Q-Former, LoRA on
    the tiny LM; only adapters and bridge train), then `palimix export --merge_lora`:
    the exported run's logits equal the trained run's."""
    from palimix import cli
    from palimix.runner.loading import load_run

    # setdefault, never unset: the fixture module writes its images once per process, on
    # first import, into this folder; later runner tests read them from there.
    os.environ.setdefault("PALIMIX_RUNNER_FIXTURE_DIR", str(tmp_path / "images"))
    import tests.runner_fixture_tasks  # noqa: F401  (registers runner_fixture_colors)

    run_dir, out_dir = tmp_path / "run", tmp_path / "merged"
    bindings = ["IMAGE_SIZE = 32"] + [f"configs.get.{k} = {v}" for k, v in dict(
        qformer_num_queries=4, qformer_depth=2, qformer_width=32, qformer_num_heads=4, qformer_mlp_dim=48).items()]
    args = ["train", "runner_fixture_colors", "--model_dir", str(run_dir), "--batch_size", "4", "--steps", "2",
            "--lengths", "inputs=8,targets=8,image=32", "--warmup_steps", "1", "--no_progress",
            "--gin_file", "models/network.gin", "--gin_file", "models/mblip_lora.gin", "--gin_file", "sizes/tiny.gin"]
    for binding in bindings:
        args += ["--gin", binding]
    assert cli.main(args) == 0
    assert cli.main(["export", "--merge_lora", str(run_dir), str(out_dir)]) == 0
    trained, merged = load_run(str(run_dir)), load_run(str(out_dir))
    assert trained.trainer.definition.trainable.trainable == lora.MBLIP_TRAINABLE
    assert merged.trainer.definition.config == lora.without_lora(trained.trainer.definition.config)
    batch = _batch(trained.trainer.definition.config)
    np.testing.assert_allclose(_logits(merged.trainer.definition.config, merged.params, batch),
                               _logits(trained.trainer.definition.config, trained.params, batch), atol=1e-5, rtol=0)
    recorded = json.load(open(out_dir / "run.json"))["model"]
    assert not any("lora" in k for k in recorded["overrides"]) and recorded["trainable"]["trainable"] == [
        "query_tokens", "qformer/.*", "language_projection/.*"]  # the adapter pattern is gone with them
    # A second export into the same folder, or of a run without adapters, is refused.
    assert cli.main(["export", "--merge_lora", str(run_dir), str(out_dir)]) == 2
    assert cli.main(["export", "--merge_lora", str(out_dir), str(tmp_path / "again")]) == 2
