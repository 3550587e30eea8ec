"""Parameters between the scanned and the unscanned layout of a network's blocks.

A network built with `scan_layers=True` holds each tower's blocks as one module whose
parameters are stacked along a leading depth axis; unscanned, one module per block:

    scanned                                      unscanned
    img/Transformer/encoderblock/...  [depth, ...]   img/Transformer/encoderblock_N/...
    encoder/layers/...                [depth, ...]   encoder/layers_N/...
    decoder/layers/...                [depth, ...]   decoder/layers_N/...
    llm/layers/...                    [depth, ...]   llm/layers_N/...

(big_vision writes the scanned names, t5x's mT5 checkpoints the unscanned ones.)

    scanned = scan_layout.stack_layers(params, config)      # for configs.replace(scan_layers=True)
    params = scan_layout.unstack_layers(scanned, config)    # and back, bit for bit

The checkpoint loaders (`palimix.models.checkpoints`) bring whatever layout a file has
into the model's with `match_layout`; `stack_flat` writes big_vision's.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from palimix.errors import CheckpointMismatchError
from palimix.models import configs

# The ViT's stack relative to the ViT (big_vision's ViT files have no `img/`).
VIT_STACK = "Transformer/encoderblock"

# Per model family: each stack's scanned name and its depth in the config. The
# unscanned name of block N is the scanned name + "_N".
_STACK_DEPTHS = {
    "pali": {
        f"img/{VIT_STACK}": lambda c: c.vit.depth,
        "encoder/layers": lambda c: c.text.num_encoder_layers,
        "decoder/layers": lambda c: c.text.num_decoder_layers,
    },
    "paligemma": {
        f"img/{VIT_STACK}": lambda c: c.vit.depth,
        "llm/layers": lambda c: c.llm.depth,
    },
}
# Every stack name of every family: what `match_layout` looks for in a checkpoint.
STACKS = tuple(dict.fromkeys(name for family in _STACK_DEPTHS.values() for name in family))


def stack_depths(config) -> dict:
    """{scanned name: number of blocks} of `config`'s network."""
    return {name: depth(config) for name, depth in _STACK_DEPTHS[configs.family_of(config)].items()}


def stack_layers(params, config) -> dict:
    """Unscanned parameters of `config`'s network -> the scanned layout (nested dicts)."""
    flat = flatten(params)
    depths = stack_depths(config)
    already = [name for name in depths if _stacked_names(flat, name)]
    if already:
        raise CheckpointMismatchError(f"The parameters are scanned already ({', '.join(already)}/...).")
    return unflatten(stack_flat(flat, depths))


def unstack_layers(params, config) -> dict:
    """Scanned parameters of `config`'s network -> the unscanned layout (nested dicts)."""
    flat = flatten(params)
    depths = stack_depths(config)
    already = [name for name in depths if _block_names(flat, name)]
    if already:
        raise CheckpointMismatchError(f"The parameters are unscanned already ({', '.join(already)}_N/...).")
    return unflatten(unstack_flat(flat, depths))


def stack_flat(flat: Mapping, depths: Mapping[str, int | None], source: str = "parameters") -> dict:
    """Flat {"a/b": array}: every stack of `depths` ({scanned name: depth, or None to
    take the blocks there are}) that is held per block, stacked along a new axis 0."""
    out = dict(flat)
    for name, depth in depths.items():
        blocks = _block_names(flat, name)
        if not blocks:
            continue
        count = max(blocks) + 1
        if depth is not None and count != depth:
            raise CheckpointMismatchError(f"{source}: {name}_N holds {count} blocks, the model has {depth}.")
        first = set(blocks.get(0, ()))
        for i in range(count):
            if set(blocks.get(i, ())) != first:
                missing = sorted(first ^ set(blocks.get(i, ())))
                raise CheckpointMismatchError(f"{source}: cannot stack {name}: {name}_{i} differs in {missing[:3]}.")
        for rest in sorted(first):
            parts = [out.pop(f"{name}_{i}/{rest}") for i in range(count)]
            out[f"{name}/{rest}"] = _stack(parts)
    return out


def unstack_flat(flat: Mapping, depths: Mapping[str, int | None], source: str = "parameters") -> dict:
    """The inverse of `stack_flat`: every stack of `depths` held stacked, split along axis
    0 into per-block names (its leading axis must be the depth, when given)."""
    out = dict(flat)
    for name, depth in depths.items():
        keys = _stacked_names(flat, name)
        if not keys:
            continue
        found = {int(np.shape(flat[k])[0]) if np.ndim(flat[k]) else 0 for k in keys}
        if len(found) != 1 or (depth is not None and found != {depth}):
            expected = "" if depth is None else f", the model has {depth}"
            raise CheckpointMismatchError(f"{source}: {name} holds {sorted(found)} blocks{expected}.")
        count = found.pop()
        for key in keys:
            value, rest = out.pop(key), key[len(name) + 1:]
            for i in range(count):
                out[f"{name}_{i}/{rest}"] = value[i]
    return out


def match_layout(flat: Mapping, model_flat: Mapping, *, stacks: Iterable[str] = STACKS,
                 source: str = "checkpoint") -> dict:
    """A flat checkpoint in the layout of a flat model (both {"a/b": array}, names on
    the same base): each stack of `stacks` the checkpoint holds the other way round is
    stacked or unstacked, checking its depth against the model's. Stacks held the same
    way, or absent from either, are left for the caller's shape check."""
    stack, unstack = {}, {}
    for name in stacks:
        model_stacked, model_blocks = _stacked_names(model_flat, name), _block_names(model_flat, name)
        if model_stacked and _block_names(flat, name):
            stack[name] = int(model_flat[model_stacked[0]].shape[0])
        elif model_blocks and _stacked_names(flat, name):
            unstack[name] = max(model_blocks) + 1
    return stack_flat(unstack_flat(flat, unstack, source), stack, source)


def _stacked_names(flat: Mapping, name: str) -> list:
    return [k for k in flat if k.startswith(name + "/")]


def _block_names(flat: Mapping, name: str) -> dict:
    """{block index: [name under the block]} of the per-block names `{name}_N/...`."""
    pattern = re.compile(re.escape(name) + r"_(\d+)/(.*)")
    blocks: dict = {}
    for key in flat:
        match = pattern.fullmatch(key)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(match.group(2))
    return blocks


def _stack(parts: list):
    """numpy arrays stay on the host (checkpoint files); jax arrays stay jax arrays."""
    return np.stack(parts) if all(isinstance(p, np.ndarray) for p in parts) else jnp.stack(parts)


def flatten(tree) -> dict:
    """A nested parameter tree (dicts or FrozenDicts) -> {"a/b/kernel": leaf}."""
    plain = traverse_util.flatten_dict(plain_dict(tree))
    return {"/".join(map(str, k)): v for k, v in plain.items()}


def unflatten(flat: Mapping) -> dict:
    """The inverse of `flatten` (nested plain dicts)."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def plain_dict(tree):
    """Nested Mappings (FrozenDicts too) as nested dicts; leaves as they are."""
    if isinstance(tree, Mapping):
        return {k: plain_dict(v) for k, v in tree.items()}
    return tree
