"""Frozen weights in 8 bits: weight-only int8 storage with per-output-channel scales.

A weight W is stored as `q = round(W / s)` (int8, in [-127, 127]) and `s = max|W| / 127`
taken over its input axes (one float32 scale per output channel; an embedding table:
one per token row). The network multiplies with `q * s` cast to the activation dtype
inside the jitted step, so only the int8 copy is held between steps (the float one is a
transient of one layer). mBLIP keeps its language model frozen in 8 bits and trains
LoRA adapters and the Q-Former beside it.

The LM config's `int8_kernels` switches it on: the T5 projections and logits kernel
(`Int8DenseGeneral`), the token embedding (`Int8Embed`), Gemma's einsum weights and MLP
(`weight`). Parameters keep their names (`.../kernel` is int8) plus a `<name>_scale`
beside each. `quantize_params(float_params, config)` turns a float checkpoint's tree
(e.g. after `checkpoints.load_mt5`) into the int8 network's.

Int8 parameters cannot train (no gradient through a rounding): they must stay out of
the trainable selection (mBLIP's `lora.MBLIP_TRAINABLE` trains only adapters and the
bridge).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from palimix.errors import UsageError
from palimix.models import layers

SCALE_SUFFIX = "_scale"
_INT8_MAX = 127.0


def quantize(w, in_axes: tuple):
    """(int8 q, float32 scale): scale has w's shape without `in_axes` (one per output channel)."""
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / _INT8_MAX, 1.0)
    q = jnp.clip(jnp.round(w / scale), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
    return q, jnp.squeeze(scale, axis=in_axes)


def dequantize(q, scale, in_axes: tuple, dtype):
    """`q * scale` in `dtype` (scale broadcast back over the input axes)."""
    return q.astype(dtype) * jnp.expand_dims(jnp.asarray(scale, dtype), in_axes)


def _scale_axes(axes: tuple, in_axes: tuple) -> tuple:
    return tuple(a for i, a in enumerate(axes) if i not in in_axes)


def int8_params(name: str, init, shape: tuple, axes: tuple, in_axes: tuple, param_dtype=jnp.float32):
    """Creates (or reads) `name` (int8) and `name_scale` in the current module; at
    initialisation both come from one float draw of `init`, quantized."""
    in_axes = tuple(a % len(shape) for a in in_axes)
    drawn = {}

    def draw(rng):
        if not drawn:
            drawn["q"], drawn["scale"] = quantize(init(rng, shape, jnp.float32), in_axes)
        return drawn

    q = layers.param_with_axes(name, lambda rng: draw(rng)["q"], axes=tuple(axes))
    scale = layers.param_with_axes(name + SCALE_SUFFIX, lambda rng: draw(rng)["scale"].astype(param_dtype),
                                   axes=_scale_axes(tuple(axes), in_axes))
    return q, scale


def weight(name: str, init, shape: tuple, axes: tuple, *, in_axes: tuple, int8: bool, dtype, param_dtype):
    """A weight of the current module in the activation dtype: a float parameter, or
    with `int8` the dequantized int8 one."""
    if not int8:
        return jnp.asarray(layers.param_with_axes(name, init, shape, param_dtype, axes=tuple(axes)), dtype)
    q, scale = int8_params(name, init, shape, axes, in_axes, param_dtype)
    return dequantize(q, scale, tuple(a % len(shape) for a in in_axes), dtype)


class Int8DenseGeneral(layers.DenseGeneral):
    """`layers.DenseGeneral` whose kernel is stored in int8 (scales per output feature)."""

    def _kernel(self, init, shape, n_in: int):
        return weight("kernel", init, shape, tuple(self.kernel_axes), in_axes=tuple(range(n_in)), int8=True,
                      dtype=self.dtype, param_dtype=self.param_dtype)


def dense_class(int8: bool):
    return Int8DenseGeneral if int8 else layers.DenseGeneral


class Int8Embed(layers.Embed):
    """`layers.Embed` with an int8 table and one scale per token row: a lookup reads the
    int8 rows and their scales, never a float copy of the whole table."""

    def setup(self):
        self.embedding, self.embedding_scale = int8_params(
            "embedding", self.embedding_init, (self.num_embeddings, self.features), ("vocab", "embed"), (1,),
            self.param_dtype)

    def __call__(self, ids):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        rows = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        out = rows * jnp.take(jnp.asarray(self.embedding_scale, self.dtype), ids, axis=0)[..., None]
        return layers.constrain(out, ("batch", "length", "embed"))


def embed_class(int8: bool):
    return Int8Embed if int8 else layers.Embed


# --- converting a float checkpoint -------------------------------------------------------

def with_int8_kernels(config, on: bool = True):
    """The network config with its language model's `int8_kernels` set to `on`."""
    from palimix.models import configs

    lang = configs.FAMILIES[configs.family_of(config)].language_field
    return dataclasses.replace(config, **{lang: dataclasses.replace(getattr(config, lang), int8_kernels=on)})


def int8_weights(config) -> dict[str, tuple]:
    """{name: in_axes} of every weight that `config`'s network (its LM `int8_kernels` on)
    stores in int8; its scale is `name + SCALE_SUFFIX`. The input axes are read from the
    logical axis names: the axes the scale lacks (shapes alone are ambiguous: a square
    kernel's scale fits either axis)."""
    from palimix.models import networks

    variables = jax.eval_shape(lambda: networks.init_variables(config, jax.random.PRNGKey(0)))  # shapes only
    shapes = _flat(variables["params"])
    axes = {name[: -len("_axes")] if name.endswith("_axes") else name: value
            for name, value in _flat(variables["params_axes"], leaf=_is_axis_metadata).items()}
    weights = {}
    for name, shape in shapes.items():
        if shape.dtype == jnp.int8:
            names, scale_names = _axis_names(axes[name]), _axis_names(axes[name + SCALE_SUFFIX])
            weights[name] = tuple(i for i, a in enumerate(names) if a not in scale_names)
    return weights


def quantize_params(float_params, config):
    """The parameters of `config`'s int8 network (its LM `int8_kernels` on) from a float
    tree of the same network without it (e.g. a loaded mT5/PaLI checkpoint): every
    weight the int8 network stores in int8 is quantized over its input axes
    (`int8_weights`); the other parameters are taken as they are."""
    int8 = int8_weights(config)
    out = dict(_flat(float_params))
    missing = sorted(set(int8) - set(out))
    if missing:
        raise UsageError(f"quantize_params: the float parameters lack {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + ".")
    for name, in_axes in int8.items():
        out[name], out[name + SCALE_SUFFIX] = quantize(out[name], in_axes)
    return _nested(out)


def dequantize_params(int8_params, config):
    """The inverse of `quantize_params` up to rounding: the float tree of `config`'s
    network with `int8_kernels` off (each int8 weight times its scale, float32; the
    scales dropped) from the int8 network's tree."""
    out = dict(_flat(int8_params))
    for name, in_axes in int8_weights(config).items():
        if name not in out or name + SCALE_SUFFIX not in out:
            raise UsageError(f"dequantize_params: the int8 parameters lack {name} or its scale.")
        out[name] = dequantize(out[name], out.pop(name + SCALE_SUFFIX), in_axes, jnp.float32)
    return _nested(out)


def _nested(flat: dict):
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _is_axis_metadata(x) -> bool:
    return hasattr(x, "names")


def _axis_names(metadata) -> tuple:
    return tuple(metadata.names)


def _flat(tree, leaf=None) -> dict:
    from flax.core import unfreeze

    flat = traverse_util.flatten_dict(unfreeze(tree), is_leaf=(lambda _, x: leaf(x)) if leaf else None)
    return {"/".join(k): v for k, v in flat.items()}


def nbytes(tree) -> int:
    """Bytes of a tree of arrays (or shapes)."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))
