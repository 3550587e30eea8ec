"""Which parameters train (palimix.models.trainable): selection by name patterns,
masks, and the split/merge the embedded runner differentiates through."""

import jax
import numpy as np
import pytest

from palimix.errors import UsageError
from palimix.models import configs, networks, trainable


@pytest.fixture(scope="module")
def params():
    return jax.eval_shape(lambda: networks.init_params(configs.get("tiny"), jax.random.PRNGKey(0)))


def test_default_trains_everything(params):
    mask = trainable.ParamSelection().mask(params)
    assert all(jax.tree_util.tree_leaves(mask))
    assert trainable.ParamSelection().trains_everything
    assert not trainable.ParamSelection(frozen=["img/.*"]).trains_everything


def test_frozen_vit_and_projection_only(params):
    frozen_vit = trainable.ParamSelection(frozen=["img/.*"]).mask(params)
    assert not any(jax.tree_util.tree_leaves(frozen_vit["img"]))
    assert all(jax.tree_util.tree_leaves(frozen_vit["img_proj"]))
    assert all(jax.tree_util.tree_leaves(frozen_vit["encoder"]))
    only_proj = trainable.ParamSelection(trainable=["img_proj/.*"]).mask(params)
    trained = [n for n, m in zip(trainable.flat_names(params), jax.tree_util.tree_leaves(only_proj)) if m]
    assert trained == ["img_proj/bias", "img_proj/kernel"]


def test_patterns_match_whole_names(params):
    # "img" alone matches no full name: a pattern is a full match, not a search.
    with pytest.raises(UsageError, match="matches none of the"):
        trainable.ParamSelection(frozen=["img"]).mask(params)
    with pytest.raises(UsageError, match="no parameter to train"):
        trainable.ParamSelection(frozen=[".*"]).mask(params)
    with pytest.raises(UsageError, match="list of patterns"):
        trainable.ParamSelection(frozen="img/.*")
    with pytest.raises(UsageError, match="bad pattern"):
        trainable.ParamSelection(frozen=["img/(.*"])


def test_split_and_merge_round_trip(params):
    real = networks.init_params(configs.get("tiny"), jax.random.PRNGKey(0))
    mask = trainable.ParamSelection(frozen=["img/.*"]).mask(real)
    train_part, frozen_part = trainable.split(real, mask)
    assert set(train_part) == {"img_proj", "token_embedder", "encoder", "decoder"}
    assert set(frozen_part) == {"img"}
    merged = trainable.merge(train_part, frozen_part)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(real)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(real)):
        np.testing.assert_array_equal(a, b)
