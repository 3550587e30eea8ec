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

def quantize_params(float_params, config):
    """The parameters of `config`'s int8 network (its LM `int8_kernels` on) from a float
    tree of the same network without it (e.g. a loaded mT5/PaLI checkpoint): every
    weight the int8 network stores in int8 is quantized over its input axes (read from
    the logical axis names: the axes its scale lacks)."""
    from palimix.models import networks

    variables = jax.eval_shape(lambda: networks.init_variables(config, jax.random.PRNGKey(0)))  # shapes only
    shapes = _flat(variables["params"])
    axes = {name[: -len("_axes")] if name.endswith("_axes") else name: value
            for name, value in _flat(variables["params_axes"], leaf=_is_axis_metadata).items()}
    source = _flat(float_params)
    out = {}
    for name, shape in shapes.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in shapes \
                and shapes[name[: -len(SCALE_SUFFIX)]].dtype == jnp.int8:
            continue  # written with its weight
        if name not in source:
            raise UsageError(f"quantize_params: the float parameters lack {name}.")
        if shape.dtype != jnp.int8:
            out[name] = source[name]
            continue
        names, scale_names = _axis_names(axes[name]), _axis_names(axes[name + SCALE_SUFFIX])
        in_axes = tuple(i for i, a in enumerate(names) if a not in scale_names)
        out[name], out[name + SCALE_SUFFIX] = quantize(source[name], in_axes)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


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
