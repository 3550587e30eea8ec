"""From a model config to the network that runs it: the one place that assembles a
config's pieces into a flax module, for the embedded runner, T5X's gin files, tests
and benchmarks alike.

    config = configs.get("tiny", remat="full")
    network = networks.build(config)
    networks.count_params("pali_17b")      # parameter counts, nothing allocated

Today every config is a PaLI (ViT -> projection -> mT5 encoder-decoder); a config
type for another composition (a decoder-only language model, a Q-Former bridge)
gets its entry in `build`.
"""

from __future__ import annotations

import jax
import numpy as np

from palimix.models import configs, pali


def build(config: configs.PaliConfig):
    """The flax module for `config`."""
    if not isinstance(config, configs.PaliConfig):
        raise TypeError(f"no network for a {type(config).__name__}; expected a PaliConfig.")
    return pali.Pali(config)


def count_params(name_or_config, **overrides) -> dict:
    """Parameter counts of the real module, from `jax.eval_shape` (nothing is allocated).

    Returns {"total", "vit", "img_proj", "text"} in parameters.
    """
    config = (name_or_config if isinstance(name_or_config, configs.PaliConfig)
              else configs.get(name_or_config, **overrides))
    shapes = jax.eval_shape(lambda: pali.init_params(config, jax.random.PRNGKey(0)))
    sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v)) for k, v in shapes.items()}
    vit = sizes.pop("img", 0)
    proj = sizes.pop("img_proj", 0)
    text = sum(sizes.values())
    return {"total": vit + proj + text, "vit": vit, "img_proj": proj, "text": text}
