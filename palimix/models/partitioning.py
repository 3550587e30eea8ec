"""Sharding PaLI over a device mesh with logical axis names (t5x / flax style).

Every parameter carries logical axis names (in the `params_axes` collection) and the
large activations carry logical sharding constraints. `DEFAULT_RULES` maps those names
onto a 2-D mesh `('data', 'model')`: the batch over 'data'; vocabulary, MLP and heads
over 'model' (Megatron-style, as t5x's standard rules do), the rest replicated.

    mesh = partitioning.make_mesh(data=2, model=4)
    shardings = partitioning.param_shardings(variables["params_axes"], mesh)
    params = jax.device_put(variables["params"], shardings)
    with partitioning.activation_sharding(mesh):
        loss = jitted_step(params, batch)   # activations follow DEFAULT_RULES
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import numpy as np
from flax.linen import partitioning as nn_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from palimix.errors import UsageError

LogicalRules = Sequence[Tuple[str, Optional[str]]]

MESH_AXES = ("data", "model")

# Text side: t5x's `standard_logical_axis_rules()` (1-D parameter partitioning).
TEXT_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
)

# Image side: same scheme for the ViT (MLP and heads over 'model').
VIT_RULES: LogicalRules = (
    ("vit_embed", None),
    ("vit_mlp", "model"),
    ("vit_heads", "model"),
    ("vit_kv", None),
    ("vit_patch_height", None),
    ("vit_patch_width", None),
    ("vit_channels", None),
    ("vit_tokens", None),
    ("vit_posemb_batch", None),
)

# Gemma (palimix.models.gemma): "stack" is the leading axis of weights that hold
# several projections in one array (q/k/v, gate/up; t5x's name for it); "kv_heads"
# the key/value heads of multi-query attention, replicated (often a single head).
GEMMA_RULES: LogicalRules = (
    ("stack", None),
    ("kv_heads", None),
)

# Scanned layers (`scan_layers`): the leading depth axis of stacked block parameters is
# never sharded (each device holds its share of every layer), as in t5x's rules.
SCAN_RULES: LogicalRules = (
    ("layers", None),
)

# LoRA adapters (palimix.models.lora): the rank axis is tiny, replicated.
ADAPTER_RULES: LogicalRules = (
    ("lora_rank", None),
)

DEFAULT_RULES: LogicalRules = TEXT_RULES + VIT_RULES + GEMMA_RULES + SCAN_RULES + ADAPTER_RULES

# Adafactor factoring for the ViT's axes (strings t5x's `factor_name_to_factordim`
# reads): the width is the row, the other matrix dims are columns.
VIT_FACTOR_RULES = {
    "vit_embed": "row",
    "vit_mlp": "column",
    "vit_heads": "column",
    "vit_kv": "column",
    "vit_patch_height": "column",
    "vit_patch_width": "column",
    "vit_channels": "column",
    "vit_tokens": "column",
    "vit_posemb_batch": "batch",
}

# ... and for Gemma's axis that t5x's standard factor rules lack ("stack" is there:
# batch, so q/k/v and gate/up are factored apart).
GEMMA_FACTOR_RULES = {
    "kv_heads": "column",
}

# ... and for LoRA's rank axis: not factored (the adapters are small).
ADAPTER_FACTOR_RULES = {
    "lora_rank": "none",
}


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A ('data', 'model') mesh; data=-1 takes all devices not used by 'model'."""
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % model:
            raise UsageError(f"{len(devices)} devices cannot be split into model={model} groups.")
        data = len(devices) // model
    if data * model != len(devices):
        raise UsageError(f"mesh data={data} x model={model} needs {data * model} devices, have {len(devices)}.")
    return Mesh(np.asarray(devices).reshape(data, model), MESH_AXES)


def parse_mesh(text: str) -> dict[str, int]:
    """`data=2,model=4` -> {"data": 2, "model": 4}; `model=4` leaves data to make_mesh
    (every device not used by 'model'). Axes are MESH_AXES; sizes positive integers."""
    shape = {}
    for part in text.split(","):
        axis, sep, size = (p.strip() for p in part.partition("="))
        if not sep or axis not in MESH_AXES or axis in shape or not size.isdigit() or int(size) < 1:
            raise UsageError(f"a mesh is axis=size pairs over {', '.join(MESH_AXES)}, e.g. data=2,model=4; "
                             f"got {text!r}.")
        shape[axis] = int(size)
    return shape


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """{"data": n, "model": m}: a mesh's axis sizes (what run.json records)."""
    return {axis: int(size) for axis, size in mesh.shape.items()}


def logical_specs(params_axes):
    """Tree of logical `PartitionSpec`s (one per parameter) from `params_axes`."""
    return flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))


def param_shardings(params_axes, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """Tree of `NamedSharding`s for the parameters on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs(params_axes), mesh, rules)


def like_params(state, params, shardings, other: NamedSharding):
    """Shardings for an optimizer state (a tree of arrays or shapes): a leaf that sits at
    a parameter's path (optax states hold trees shaped like the parameters) and has its
    shape is placed like that parameter (Adam's moments, Adafactor's unfactored second
    moments); every other leaf (step counts, factored row/column statistics) gets `other`."""
    shapes = {_dict_keys(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    placed = {_dict_keys(path): sharding for path, sharding in jax.tree_util.tree_leaves_with_path(shardings)}

    def place(path, leaf):
        names = _dict_keys(path)
        # The state's own fields come first (`[0].v_row[...]`): the parameter's path is a suffix.
        for start in range(len(names)):
            if names[start:] in shapes:
                return placed[names[start:]] if shapes[names[start:]] == leaf.shape else other
        return other

    return jax.tree_util.tree_map_with_path(place, state)


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard an input's leading (batch) dimension over 'data'."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """Within: the model's logical activation constraints apply on `mesh`."""
    # jax.set_mesh on new JAX; the Mesh context manager before it existed.
    mesh_context = jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh
    with mesh_context, nn.logical_axis_rules(rules):
        yield
