"""From a model config to the network that runs it: the one place that assembles a
config's pieces into a flax module, for the embedded runner, T5X's gin files, tests
and benchmarks alike.

    config = configs.get("tiny", remat="full")
    network = networks.build(config)
    batch = networks.dummy_batch(config, 2, {"inputs": 16, "targets": 8})
    logits = network.apply({"params": params}, *networks.inputs(network, batch))
    networks.count_params("pali_17b")      # parameter counts, nothing allocated

A network class names the model features it reads (`INPUTS`, in the order of its
`__call__` arguments; `PREDICT_INPUTS` for decoding), so the runner and T5X wrappers
never list them. Two compositions today: a `PaliConfig` (ViT -> projection -> mT5
encoder-decoder, `pali.Pali`) and a `PaliGemmaConfig` (ViT -> projection -> decoder-only
Gemma, `paligemma.PaliGemma`); either config's `bridge` swaps the projection for a
Q-Former (`palimix.models.qformer`). A config type for another composition gets its
entry in `build`, `dummy_batch`, `count_params` and `feature_converter`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from palimix.models import configs, pali, paligemma, qformer

# Per network config type: its flax module, and the module holding its `dummy_batch`
# helper.
_NETWORKS = {
    configs.PaliConfig: (pali.Pali, pali),
    configs.PaliGemmaConfig: (paligemma.PaliGemma, paligemma),
}


def _network_entry(config):
    if type(config) not in _NETWORKS:
        known = ", ".join(cls.__name__ for cls in _NETWORKS)
        raise TypeError(f"no network for a {type(config).__name__}; expected one of {known}.")
    return _NETWORKS[type(config)]


def build(config):
    """The flax module for `config` (a PaliConfig or a PaliGemmaConfig)."""
    network_class, _ = _network_entry(config)
    return network_class(config)


def inputs(network, batch) -> tuple:
    """The positional arguments of `network.__call__` from a feature-converted batch."""
    return tuple(batch[name] for name in network.INPUTS)


def dummy_batch(config, batch_size: int, task_feature_lengths) -> dict:
    """Model features of the right shapes and dtypes for `config` (initialisation).

    Encoder-decoder: inputs and targets apart; decoder-only: one decoder sequence of
    inputs + targets tokens."""
    _, helpers = _network_entry(config)
    return helpers.dummy_batch(config, batch_size, task_feature_lengths["inputs"], task_feature_lengths["targets"])


def feature_converter(config, pack: bool = False):
    """The seqio feature converter that turns palimix's task features into the model
    features `config`'s network reads (TensorFlow is imported here, not at import)."""
    from palimix.models import feature_converter as converters

    # The encoder-decoder reads prompt and answer apart; the decoder-only network reads
    # prompt ++ answer as one prefix-LM sequence (docs/ARCHITECTURE.md).
    by_family = {"pali": converters.PaliFeatureConverter, "paligemma": converters.PaliDecoderFeatureConverter}
    return by_family[configs.family_of(config)](pack=pack)


def init_variables(config, rng, batch_size: int = 1, input_length: int = 8, target_length: int = 8):
    """`{'params': ..., 'params_axes': ...}` of `config`'s network (params_axes holds the
    logical axis names). Jitted and cached per config: initialising op by op is much
    slower on CPU."""
    return _jitted_init(config, batch_size, input_length, target_length)(rng)


@functools.lru_cache(maxsize=16)
def _jitted_init(config, batch_size: int, input_length: int, target_length: int):
    network = build(config)
    lengths = {"inputs": input_length, "targets": target_length}

    def init(rng):
        batch = dummy_batch(config, batch_size, lengths)
        return network.init({"params": rng, "dropout": rng}, *inputs(network, batch), enable_dropout=False)

    return jax.jit(init)


def init_params(config, rng):
    return init_variables(config, rng)["params"]


def count_params(name_or_config, **overrides) -> dict:
    """Parameter counts of the real module, from `jax.eval_shape` (nothing is allocated).

    Returns {"total", "vit", "img_proj", "text"} in parameters ("text": the language
    model; "img_proj": the bridge of image tokens to its width -- the projection, which
    PaliGemma keeps inside `img` as `img/head`, or the Q-Former's `query_tokens`,
    `qformer` and `language_projection`).
    """
    config = configs.get(name_or_config, **overrides) if isinstance(name_or_config, str) else name_or_config
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    image = dict(shapes.get("img", {}))
    bridge = ("img_proj",) + qformer.BRIDGE_PARAMS
    proj = size({k: v for k, v in shapes.items() if k in bridge}) + size(image.pop("head", {}))
    vit = size(image)
    text = size({k: v for k, v in shapes.items() if k not in ("img",) + bridge})
    return {"total": vit + proj + text, "vit": vit, "img_proj": proj, "text": text}
