"""PaliGemma checkpoints in big_vision's layout: load, save, and the same logits.

The checkpoints are written here with big_vision's key names and shapes
(`paligemma_reference.checkpoint_shapes`, random values); the expected logits come from
`paligemma_reference.forward`, a numpy forward pass written from big_vision's math that
reads the file's flat dict directly. palimix's `PaliGemma` must agree within 1e-4
(float32) on every text position.
"""

import os
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from palimix.models import checkpoints, configs, networks
from palimix.models.checkpoints import CheckpointMismatchError

sys.path.insert(0, os.path.dirname(__file__))
import paligemma_reference as reference  # noqa: E402

ATOL = 1e-4
# tiny_decoder has fewer kv heads than query heads (`q_einsum` + `kv_einsum`); with as many,
# big_vision stores one `qkv_einsum`.
LAYOUTS = ("q_kv_einsum", "qkv_einsum")


def _config(layout: str):
    heads = configs.get("tiny_decoder").llm.num_heads
    config = configs.get("tiny_decoder", **({"llm_num_kv_heads": heads} if layout == "qkv_einsum" else {}))
    assert (config.llm.num_kv_heads == config.llm.num_heads) == (layout == "qkv_einsum")
    return config


def _flat(tree) -> dict:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _nested(flat):
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _shapes(config) -> dict:
    vit, llm = config.vit, config.llm
    return reference.checkpoint_shapes(
        image_size=vit.image_size, patch_size=vit.patch_size, vit_width=vit.width, vit_depth=vit.depth,
        vit_mlp_dim=vit.mlp_dim, vit_heads=vit.num_heads, width=llm.width, depth=llm.depth,
        mlp_dim=llm.mlp_dim, num_heads=llm.num_heads, num_kv_heads=llm.num_kv_heads,
        head_dim=llm.head_dim, vocab_size=llm.vocab_size)


def _init_params(config, seed: int = 0):
    network = networks.build(config)
    batch = networks.dummy_batch(config, 1, {"inputs": 4, "targets": 4})
    variables = jax.jit(network.init)(jax.random.PRNGKey(seed), *networks.inputs(network, batch))
    return network, variables["params"]


@pytest.fixture(scope="module", params=LAYOUTS)
def setup(request, tmp_path_factory):
    """(config, network, fresh params, big_vision flat dict, its .npz path) per layout."""
    config = _config(request.param)
    network, params = _init_params(config)
    flat = reference.random_params(_shapes(config), seed=1)
    path = str(tmp_path_factory.mktemp(request.param) / "paligemma.npz")
    reference.write_npz(path, flat)
    return config, network, params, flat, path


def _batch(config, seed: int = 2):
    """Two examples in seqio's prefix-LM layout: targets = prompt ++ answer, inputs =
    targets shifted right, causal_attention 1 on the shifted prefix. The second is padded."""
    rng = np.random.default_rng(seed)
    length, vocab = 12, config.llm.vocab_size
    targets = rng.integers(3, vocab, (2, length)).astype(np.int32)
    targets[1, 9:] = 0  # padding
    prompt_lengths = np.array([4, 6])
    causal = (np.arange(length)[None] <= prompt_lengths[:, None]).astype(np.int32)
    s = config.vit.image_size
    return dict(
        encoder_images=rng.uniform(-1, 1, (2, s, s, 3)).astype(np.float32),
        encoder_image_mask=np.ones((2,), np.int32),
        decoder_input_tokens=np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        decoder_target_tokens=targets,
        decoder_causal_attention=causal,
    )


def _palimix_logits(network, params, batch):
    return np.asarray(jax.jit(network.apply)({"params": params}, *networks.inputs(network, batch)), np.float64)


def _reference_logits(flat, batch):
    # big_vision: mask_ar 0 on the fully attended prefix, 1 on the causal answer.
    return reference.forward(flat, batch["encoder_images"], batch["decoder_input_tokens"],
                             1 - batch["decoder_causal_attention"])


def test_logits_equal_big_vision_reference(setup):
    config, network, params, flat, path = setup
    loaded = checkpoints.load_paligemma(path, params)
    batch = _batch(config)
    got, want = _palimix_logits(network, loaded, batch), _reference_logits(flat, batch)
    valid = batch["decoder_target_tokens"] > 0  # padding positions are nobody's business
    diff = np.abs(got - want)[valid]
    print(f"max |palimix - big_vision reference| logit difference: {diff.max():.2e} "
          f"(logits std {want[valid].std():.2f})")
    assert got.shape == want.shape
    assert diff.max() < ATOL


def test_reference_is_a_prefix_lm(setup):
    """The reference itself: the prompt is attended fully, the answer causally."""
    config, _, _, flat, _ = setup
    batch = _batch(config)
    base = _reference_logits(flat, batch)

    def changed_at(position):
        tokens = batch["decoder_input_tokens"].copy()
        tokens[0, position] = 3 + (tokens[0, position] - 2) % (config.llm.vocab_size - 3)
        return _reference_logits(flat, dict(batch, decoder_input_tokens=tokens))[0]

    answer = changed_at(8)  # example 0: prefix = positions 0..4
    assert np.array_equal(answer[:8], base[0, :8]) and not np.allclose(answer[8], base[0, 8])
    prompt = changed_at(4)  # the last prefix token is seen by the first one
    assert not np.allclose(prompt[0], base[0, 0])


def test_round_trip_is_bit_identical(setup, tmp_path):
    _, _, params, flat, path = setup
    loaded = checkpoints.load_paligemma(path, params)
    saved = checkpoints.save_paligemma(loaded, str(tmp_path / "saved.npz"))
    with np.load(saved) as npz:
        assert sorted(npz.files) == sorted(flat)
        for key in flat:
            assert npz[key].dtype == flat[key].dtype and npz[key].shape == flat[key].shape, key
            assert np.array_equal(npz[key], flat[key]), key
    reloaded = checkpoints.load_paligemma(saved, params)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(reloaded)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_file_loads_as_its_values(setup, tmp_path):
    _, _, params, flat, _ = setup
    half = {k: v.astype(jax.numpy.bfloat16) for k, v in flat.items()}
    path = checkpoints.save_paligemma(_nested(half), str(tmp_path / "half.bf16.npz"))
    with np.load(path) as npz:  # numpy writes bfloat16 as 2-byte voids, like big_vision's files
        assert npz["llm/final_norm/scale"].dtype.kind == "V"
    assert checkpoints.read_npz(path)["llm/final_norm/scale"].dtype == jax.numpy.bfloat16
    loaded = _flat(checkpoints.load_paligemma(path, params))
    assert loaded["llm/final_norm/scale"].dtype == np.float32
    np.testing.assert_array_equal(loaded["llm/final_norm/scale"], half["llm/final_norm/scale"].astype(np.float32))


def test_load_gemma_leaves_the_image_side(setup, tmp_path):
    _, _, params, flat, path = setup
    before = _flat(params)
    gemma_only = {k[len("llm/"):]: v for k, v in flat.items() if k.startswith("llm/")}
    reference.write_npz(str(tmp_path / "gemma.npz"), gemma_only)
    for source in (path, f"{path}:llm", str(tmp_path / "gemma.npz")):
        after = _flat(checkpoints.load_gemma(source, params))
        assert sorted(after) == sorted(before)
        for name, value in after.items():
            if name.startswith("img/"):
                assert np.array_equal(value, before[name]), (source, name)
        np.testing.assert_array_equal(after["llm/embedder/input_embedding"], flat["llm/embedder/input_embedding"])
        np.testing.assert_array_equal(after["llm/final_norm/scale"], flat["llm/final_norm/scale"])
        assert any(not np.array_equal(after[n], before[n]) for n in after if n.startswith("llm/"))


def test_load_gemma_with_a_smaller_vocabulary_keeps_the_models_new_rows(setup):
    _, _, params, flat, _ = setup
    before = _flat(params)["llm/embedder/input_embedding"]
    rows = before.shape[0] - 100  # e.g. Gemma's 256,000 under PaliGemma's 257,152
    small = {k: (v[:rows] if k == "llm/embedder/input_embedding" else v) for k, v in flat.items()}
    after = _flat(checkpoints.load_gemma(small, params))["llm/embedder/input_embedding"]
    np.testing.assert_array_equal(after[:rows], small["llm/embedder/input_embedding"])
    np.testing.assert_array_equal(after[rows:], before[rows:])


def test_mismatches_name_the_keys(setup):
    _, _, params, flat, _ = setup
    width = flat["llm/final_norm/scale"].shape[0]
    bigger = dict(flat, **{"llm/embedder/input_embedding": np.zeros((257152, width), np.float32)})
    vocabulary = r"(?s)llm/embedder/input_embedding: checkpoint \(257152.*vocab_size=257152"
    with pytest.raises(CheckpointMismatchError, match=vocabulary):
        checkpoints.load_paligemma(bigger, params)
    missing = {k: v for k, v in flat.items() if k != "llm/layers/mlp/linear"}
    with pytest.raises(CheckpointMismatchError, match="llm/layers_0/mlp/linear: not in the checkpoint"):
        checkpoints.load_paligemma(missing, params)
    deeper = {k: (np.concatenate([v, v]) if k.startswith("llm/layers/") else v) for k, v in flat.items()}
    with pytest.raises(CheckpointMismatchError, match="llm/layers holds"):
        checkpoints.load_paligemma(deeper, params)
    extra = dict(flat, **{"llm/layers/attn/extra/w": flat["llm/layers/mlp/linear"]})
    with pytest.raises(CheckpointMismatchError, match="llm/layers_0/attn/extra/w: in the checkpoint, not in the model"):
        checkpoints.load_paligemma(extra, params)
    with pytest.raises(CheckpointMismatchError, match="not a PaliGemma checkpoint.*load_gemma"):
        checkpoints.load_paligemma({k: v for k, v in flat.items() if k.startswith("llm/")}, params)
    with pytest.raises(CheckpointMismatchError, match="holds no Gemma"):
        checkpoints.load_gemma({k: v for k, v in flat.items() if k.startswith("img/")}, params)


# big_vision's PaliGemma pt_224 (configs/proj/paligemma: So400m/14 at 224 px, gemma_2b, the
# 257,152-id vocabulary), written out here rather than read from palimix's configs.
PT_224 = dict(image_size=224, patch_size=14, vit_width=1152, vit_depth=27, vit_mlp_dim=4304, vit_heads=16,
              width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256, vocab_size=257152)


def test_paligemma_3b_has_the_parameters_of_big_vision_pt_224():
    """Every parameter of a real pt_224.npz, by name and shape (no memory allocated)."""
    config = configs.get("paligemma_3b")
    network = networks.build(config)
    batch = networks.dummy_batch(config, 1, {"inputs": 4, "targets": 4})
    abstract = jax.eval_shape(network.init, jax.random.PRNGKey(0), *networks.inputs(network, batch))["params"]
    model = {k: tuple(v.shape) for k, v in _flat(abstract).items()}
    expected = {}
    for key, shape in reference.checkpoint_shapes(**PT_224).items():
        for stacked, block in (("img/Transformer/encoderblock/", "img/Transformer/encoderblock_{}/"),
                               ("llm/layers/", "llm/layers_{}/")):
            if key.startswith(stacked):  # palimix holds one subtree per block
                expected.update({block.format(i) + key[len(stacked):]: shape[1:] for i in range(shape[0])})
                break
        else:
            expected[key] = shape
    assert model == expected
