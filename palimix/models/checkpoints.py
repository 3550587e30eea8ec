"""Loading pretrained towers into PaLI parameters: big_vision ViTs and t5x mT5s.

    params = pali.init_params(config, rng)
    params = checkpoints.load_vit("siglip_so400m14_224.npz:img", params)
    params = checkpoints.load_mt5("mt5_base/checkpoint_1000000", params)

What loads:

`load_vit(checkpoint, params)`: a big_vision `.npz` (keys are "/"-joined names):
  plain ViT params ("Transformer/encoderblock_0/...", "embedding/kernel", ...), a saved
  train state ("params/..." or "opt/target/..."), or a sub-model picked with big_vision's
  colon syntax ("file.npz:img" for SigLIP / two-tower files). Also handled: scanned
  blocks ("Transformer/encoderblock" with a leading depth axis), pre-linen names and
  the old position-embedding places (`flax.training.checkpoints.convert_pre_linen`),
  a class token's position embedding (dropped: PaLI uses patch tokens only), and a
  different resolution (the position-embedding grid is resampled bilinearly, as
  big_vision does). Heads (`head`, `MAPHead_0`, `pre_logits`) are ignored.

`load_mt5(checkpoint, params)`: the text tower from a t5x checkpoint, by t5x's names
  ("token_embedder/embedding", "encoder/layers_0/attention/query/kernel", ...):
  * t5x's native format: a `checkpoint_N/` folder (or the model dir: latest step, or
    the `checkpoint` file itself) with the msgpack `checkpoint` file and TensorStore
    arrays -- what `t5x.train` writes and what the public mT5 T5X checkpoints are;
  * an Orbax checkpoint (t5x with `use_orbax=True` writes `checkpoint_N/state/`),
    holding {"target": params, ...} or {"params": ...} or the params themselves;
  * a dict: nested, or flat with "/"-joined keys, optionally under "target/".
  Only local paths are tested; gs:// works where TensorStore/Orbax can reach GCS.

Both check every shape and raise `CheckpointMismatchError` listing every missing or
mis-shaped parameter (a different vocabulary gets a hint: `skip=` or `vocab_size=`).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping, Optional

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from palimix.errors import PalimixError

IMAGE_TOWER = ("img",)
IMAGE_SIDE = ("img", "img_proj")  # everything a text-only checkpoint lacks
_VIT_IGNORED = re.compile(r"^(head|MAPHead_0|pre_logits|cls)(/|$)")


class CheckpointMismatchError(PalimixError, ValueError):
    """A checkpoint's parameters do not fit the model (missing names, other shapes)."""


# ----------------------------------------------------------------------------------------
# Shared: flatten, check, merge.


def _flatten(tree) -> dict:
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(_to_dict(tree)).items()}


def _to_dict(tree):
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def _merge(params, loaded: dict, *, under: tuple, exclude: tuple = (), skip: Iterable[str] = (), source: str):
    """Copies `loaded` (flat names relative to `under`) into `params`, checking shapes.

    Parameters matching a `skip` regex keep their current (fresh) value.
    """
    flat = _flatten(params)
    prefix = "/".join(under) + "/" if under else ""
    skip_res = [re.compile(s) for s in skip]
    missing, mismatched, loaded_names = [], [], set()
    updated = dict(flat)
    for name, current in flat.items():
        if not name.startswith(prefix) or name.split("/", 1)[0] in exclude:
            continue
        rel = name[len(prefix):]
        if any(r.fullmatch(rel) or r.fullmatch(name) for r in skip_res):
            continue
        if rel not in loaded:
            missing.append(rel)
            continue
        value = np.asarray(loaded[rel])
        if tuple(value.shape) != tuple(current.shape):
            mismatched.append((rel, tuple(value.shape), tuple(current.shape)))
            continue
        loaded_names.add(rel)
        value = value.astype(current.dtype)
        sharding = getattr(current, "sharding", None)
        updated[name] = jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)
    if missing or mismatched:
        lines = [f"{source} does not fit the model:"]
        lines += [f"  {n}: checkpoint {a} vs model {b}" for n, a, b in mismatched[:20]]
        lines += [f"  {n}: not in the checkpoint" for n in missing[:20]]
        if len(missing) + len(mismatched) > 40:
            lines.append(f"  ... {len(missing) + len(mismatched) - 40} more")
        if any(n in ("token_embedder/embedding", "decoder/logits_dense/kernel") for n, _, _ in mismatched):
            lines.append(
                "  The checkpoint has another vocabulary: build the model with its vocab_size (mT5: "
                "vocab_size=250112), or load with skip=('token_embedder/.*', 'decoder/logits_dense/.*') "
                "to keep those freshly initialised."
            )
        raise CheckpointMismatchError("\n".join(lines))
    unused = sorted(set(loaded) - loaded_names - {n for n in loaded if any(r.fullmatch(n) for r in skip_res)})
    if unused:
        logging.info("%s: %d parameters not used by the model, e.g. %s", source, len(unused), unused[:5])
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in updated.items()})
    return nested


# ----------------------------------------------------------------------------------------
# big_vision ViT (.npz).


def read_big_vision_npz(checkpoint: str) -> dict:
    """Flat {name: array} of the ViT params in a big_vision .npz ("path.npz:sub/model" ok)."""
    path, sep, sub = checkpoint.partition(".npz:")
    path = path + ".npz" if sep else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such ViT checkpoint: {path}")
    with np.load(path, allow_pickle=False) as npz:
        flat = {k: npz[k] for k in npz.files}
    for root in ("params/", "opt/target/"):  # a saved train state: keep its params
        if any(k.startswith(root) for k in flat):
            flat = {k[len(root):]: v for k, v in flat.items() if k.startswith(root)}
            break
    if sub:
        sub = sub.strip("/") + "/"
        picked = {k[len(sub):]: v for k, v in flat.items() if k.startswith(sub)}
        if not picked:
            tops = sorted({k.split("/", 1)[0] for k in flat})
            raise CheckpointMismatchError(f"{checkpoint}: no sub-model {sub[:-1]!r}; the file has {tops}.")
        flat = picked
    if not any(k.startswith("Transformer/") for k in flat):
        towers = sorted({k.split("/", 1)[0] for k in flat if "/Transformer/" in k})
        hint = f" It holds sub-models {towers}: load e.g. '{path}:{towers[0]}'." if towers else ""
        raise CheckpointMismatchError(f"{checkpoint} has no ViT ('Transformer/...' parameters).{hint}")
    return flat


def _fix_vit_layout(flat: dict, model_posemb_shape: Optional[tuple]) -> dict:
    """Old names, scanned blocks, class-token and resolution changes -> our layout."""
    from flax.training.checkpoints import convert_pre_linen

    tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    tree = _to_dict(convert_pre_linen(tree))  # e.g. MlpBlock_3 -> MlpBlock_0 in pre-linen files
    transformer = tree["Transformer"]
    for old in (("posembed_input", "pos_embedding"), ("pos_embedding",)):
        node = transformer
        for k in old[:-1]:
            node = node.get(k, {})
        if old[-1] in node:
            tree["pos_embedding"] = node.pop(old[-1])
    transformer.pop("posembed_input", None)
    if "encoderblock" in transformer:  # big_vision scan=True: one block, depth-stacked leaves
        stacked = transformer.pop("encoderblock")
        depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
        for i in range(depth):
            transformer[f"encoderblock_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    flat = _flatten(tree)
    posemb = flat.get("pos_embedding")
    if posemb is not None and model_posemb_shape is not None:
        n = posemb.shape[1]
        if int(np.sqrt(n - 1)) ** 2 == n - 1 and int(np.sqrt(n)) ** 2 != n:  # class token first
            posemb = posemb[:, 1:]
        if posemb.shape[1] != model_posemb_shape[1]:
            posemb = resample_posemb(posemb, model_posemb_shape[1])
        flat["pos_embedding"] = posemb
    return {k: v for k, v in flat.items() if not _VIT_IGNORED.match(k)}


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """Bilinear resampling of a square `[1, g*g, width]` grid to `num_tokens` (square)."""
    import scipy.ndimage

    old, new = int(round(np.sqrt(posemb.shape[1]))), int(round(np.sqrt(num_tokens)))
    if old * old != posemb.shape[1] or new * new != num_tokens:
        raise CheckpointMismatchError(
            f"Cannot resample position embeddings {posemb.shape} to {num_tokens} tokens: grids must be square.")
    logging.info("ViT: resampling position embeddings %dx%d -> %dx%d", old, old, new, new)
    grid = np.asarray(posemb, np.float32).reshape(old, old, -1)
    grid = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    return grid.reshape(1, new * new, -1)


def load_vit(checkpoint, params, *, under: tuple = IMAGE_TOWER):
    """`params` with the image tower (`img/...`) replaced by a big_vision ViT checkpoint.

    checkpoint: a .npz path (optionally "path.npz:img"), or a flat/nested dict of ViT params.
    """
    model_flat = _flatten(params)
    prefix = "/".join(under) + "/"
    if not any(k.startswith(prefix) for k in model_flat):
        raise CheckpointMismatchError(f"The model has no image tower under {prefix!r} (text-only parameters?).")
    source = checkpoint if isinstance(checkpoint, str) else "ViT checkpoint"
    flat = read_big_vision_npz(checkpoint) if isinstance(checkpoint, str) else _flatten(checkpoint)
    posemb = model_flat.get(prefix + "pos_embedding")
    flat = _fix_vit_layout(flat, None if posemb is None else tuple(posemb.shape))
    return _merge(params, flat, under=under, source=source)


# ----------------------------------------------------------------------------------------
# t5x mT5 (native TensorStore/msgpack format, Orbax, or a dict).


def _find_t5x_checkpoint_dir(path: str, step: Optional[int]) -> str:
    if os.path.isfile(path):
        return os.path.dirname(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such checkpoint: {path}")
    if os.path.exists(os.path.join(path, "checkpoint")) or _is_orbax_dir(path):
        return path
    steps = sorted(int(m.group(1)) for d in os.listdir(path) if (m := re.fullmatch(r"checkpoint_(\d+)", d)))
    if not steps:
        raise CheckpointMismatchError(f"{path} holds no t5x checkpoint (no 'checkpoint' file, no checkpoint_N/).")
    if step is not None and step not in steps:
        raise CheckpointMismatchError(f"{path} has no step {step}; steps: {steps}.")
    return os.path.join(path, f"checkpoint_{steps[-1] if step is None else step}")


def _is_orbax_dir(path: str) -> bool:
    names = set(os.listdir(path))
    return bool(names & {"_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "state"})


def _read_tensorstore(spec: dict, ckpt_dir: str):
    import tensorstore as ts

    spec = {**spec, "kvstore": dict(spec["kvstore"])}
    rel = spec["kvstore"]["path"]
    m = re.fullmatch(r"gs://([^/]*)/(.*)", ckpt_dir)
    if m:
        spec["kvstore"].update(driver="gcs", bucket=m.group(1), path=os.path.join(m.group(2), rel))
    else:
        spec["kvstore"].update(driver="file", path=os.path.join(ckpt_dir, rel))
    return ts.open(spec, open=True).result().read().result()


def read_t5x_checkpoint(path: str, step: Optional[int] = None) -> dict:
    """Flat {name: np.ndarray} of the model parameters ("target") in a t5x checkpoint."""
    ckpt_dir = _find_t5x_checkpoint_dir(path, step)
    msgpack_file = os.path.join(ckpt_dir, "checkpoint")
    if os.path.isfile(msgpack_file):
        from flax import serialization

        with open(msgpack_file, "rb") as f:
            contents = serialization.msgpack_restore(f.read())
        state = contents["optimizer"] if "optimizer" in contents else contents  # version 0 had no wrapper
        if "target" not in state:
            raise CheckpointMismatchError(f"{msgpack_file}: no 'target' parameters (keys: {sorted(state)}).")
        flat = _flatten_with_specs(_tensorstore_leaves(state["target"]))
        return {k: (_read_tensorstore(v, ckpt_dir) if isinstance(v, dict) else np.asarray(v))
                for k, v in flat.items()}
    import orbax.checkpoint as ocp

    item = os.path.join(ckpt_dir, "state") if os.path.isdir(os.path.join(ckpt_dir, "state")) else ckpt_dir
    tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(item))
    for key in ("target", "params"):
        if isinstance(tree, Mapping) and key in tree:
            tree = tree[key]
            break
    return {k: np.asarray(v) for k, v in _flatten(tree).items()}


def _tensorstore_leaves(tree):
    """Treat TensorStore spec dicts (they have a 'driver') as leaves when flattening."""
    if isinstance(tree, Mapping):
        if "driver" in tree and "kvstore" in tree:
            return _SpecLeaf(tree)
        return {k: _tensorstore_leaves(v) for k, v in tree.items()}
    return tree


class _SpecLeaf(dict):
    """A TensorStore spec dict that flatten_dict must not descend into."""


def _flatten_with_specs(tree) -> dict:
    out = {}

    def walk(node, path):
        if isinstance(node, Mapping) and not isinstance(node, _SpecLeaf):
            for k, v in node.items():
                walk(v, path + (str(k),))
        else:
            out["/".join(path)] = dict(node) if isinstance(node, _SpecLeaf) else node

    walk(tree, ())
    return out


def load_mt5(checkpoint, params, *, step: Optional[int] = None, skip: Iterable[str] = ()):
    """`params` with the text tower replaced by a t5x T5 1.1 / mT5 checkpoint.

    The image side (`img`, `img_proj`) keeps its values. skip: regexes of parameter names
    (e.g. 'token_embedder/.*') to keep freshly initialised, such as the vocabulary
    layers when the model uses another vocabulary than the checkpoint.
    """
    if isinstance(checkpoint, Mapping):
        flat, source = _flatten(checkpoint), "mT5 parameters"
        if any(k.startswith("target/") for k in flat):
            flat = {k[len("target/"):]: v for k, v in flat.items() if k.startswith("target/")}
    else:
        flat, source = read_t5x_checkpoint(str(checkpoint), step), str(checkpoint)
    return _merge(params, flat, under=(), exclude=IMAGE_SIDE, skip=skip, source=source)
