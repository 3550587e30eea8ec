"""Loading pretrained towers: big_vision ViTs, t5x mT5s, big_vision PaliGemma and Gemma.

    params = networks.init_params(config, rng)
    params = checkpoints.load_vit("siglip_so400m14_224.npz:img", params)
    params = checkpoints.load_mt5("mt5_base/checkpoint_1000000", params)

    params = checkpoints.load_paligemma("pt_224.npz", params)       # a PaliGemma network
    params = checkpoints.load_gemma("pt_224.npz", params)           # its llm/ part only
    checkpoints.save_paligemma(params, "mine.npz")                  # big_vision's layout

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

`load_paligemma(checkpoint, params)`: a whole big_vision PaliGemma `.npz` (float32 or
  bfloat16, e.g. `pt_224.npz`, `pt_224.bf16.npz`; plain params or a train state) into
  palimix's `PaliGemma`: `img/...` (the ViT as `load_vit` reads it, with `img/head`, the
  projection) and `llm/...` (Gemma: `embedder/input_embedding`, `layers/attn/q_einsum/w`
  + `kv_einsum/w` or `qkv_einsum/w`, `attn_vec_einsum/w`, `mlp/gating_einsum`,
  `mlp/linear`, `pre_attention_norm/scale`, `pre_ffw_norm/scale`, `final_norm/scale`).
  big_vision stacks the blocks of both towers along a leading depth axis
  (`img/Transformer/encoderblock/...`, `llm/layers/...`); they are split into the
  model's per-block names (`encoderblock_N`, `layers_N`) where it has them (a model
  built with `scan_layers` takes them as they are).
  Strict: a checkpoint parameter the model does not use is an error too.
`load_gemma(checkpoint, params)`: only `llm/...` (from a PaliGemma file, "file.npz:llm",
  or a Gemma-only big_vision file); `img/...` keeps its values. A checkpoint with fewer
  embedding rows (Gemma's 256,000 under PaliGemma's 257,152) fills the first rows.
`save_paligemma(params, path)`: the inverse of load_paligemma, bit for bit.

`load_vqgan(checkpoint, params)`: MaskGIT's VQGAN tokenizer (a flax msgpack file of
  {"params": {"encoder", "decoder", "quantizer"}}) into `palimix.models.vqgan.Vqgan`.
`load_lpips_vgg16(checkpoint, params, lin=None)`: the tokenizer's perceptual-loss network
  (`palimix.models.perceptual.Lpips`): torchvision's VGG16 (`features.N.weight`
  [out, in, kh, kw], transposed to flax's [kh, kw, in, out]) and optionally LPIPS's
  linear heads (`lin{k}.model.1.weight`), each as `.safetensors` or `.npz`.

Every loader brings the file's blocks into the model's layout, scanned or not
(`palimix.models.scan_layout.match_layout`): a t5x mT5 file's `encoder/layers_N` load
into a scanned `encoder/layers` too.

`load_qformer(checkpoint, params)`: the Q-Former bridge (`query_tokens`, `qformer/...`,
  `language_projection/...`) from a converted Hugging Face BLIP-2 / mBLIP checkpoint
  (`Blip2ForConditionalGeneration` names: "qformer.encoder.layer.0.attention.attention.query.weight",
  ...): a `.safetensors` file, a folder of `.safetensors` shards, or an `.npz` with the
  same names. Linear weights are [out, in] there (transposed here), LayerNorm weights
  are `scale`. The other towers' keys (`vision_model.*`, `language_model.*`) are left
  alone; within the bridge, a missing, extra or mis-shaped key is an error.

All check every shape and raise `CheckpointMismatchError` listing every missing or
mis-shaped parameter (a different vocabulary gets a hint: `skip=` or `vocab_size=`).

`load_palimix(run_dir, params)`: a palimix run (`palimix train --model_dir`): every
  parameter, strict both ways, except LoRA adapters the run lacks (fresh: B = 0) and the
  LM's storage: a float run's LM is quantized for an int8 network, an int8 run's
  dequantized for a float one (`quantize.int8_weights` of the run's recorded config).
  mBLIP's instruct stage continues its warm-up run so.

`WARM_START_FORMATS`: format name -> its loader and the parameters it sets, the one
table behind `palimix train --init_checkpoint PATH --init_format NAME` and
`palimix convert-checkpoint` (`warm_start(params, path, format)`, `warm_started_part`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable, Mapping, Optional

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from palimix.errors import CheckpointMismatchError, UsageError, close_matches_hint
from palimix.models import scan_layout
from palimix.models.qformer import BRIDGE_PARAMS
from palimix.models.scan_layout import flatten as _flatten
from palimix.models.scan_layout import plain_dict as _to_dict

IMAGE_TOWER = ("img",)
# Everything a text-only checkpoint lacks: the ViT and the bridge (linear or Q-Former).
IMAGE_SIDE = ("img", "img_proj") + BRIDGE_PARAMS
_VIT_IGNORED = re.compile(r"^(head|MAPHead_0|pre_logits|cls)(/|$)")


# ----------------------------------------------------------------------------------------
# Shared: check, merge (flat names: `scan_layout.flatten`).


# When the embedding/softmax is what differs, the cause is the vocabulary, not the model.
_VOCABULARY_HINTS = {
    "token_embedder/embedding": "mt5",
    "decoder/logits_dense/kernel": "mt5",
    "llm/embedder/input_embedding": "gemma",
}
_HINTS = {
    "mt5": "  The checkpoint has another vocabulary: build the model with its vocab_size (mT5: "
           "vocab_size=250112), or load with skip=('token_embedder/.*', 'decoder/logits_dense/.*') "
           "to keep those freshly initialised.",
    "gemma": "  The checkpoint has another vocabulary: build the model with its vocab_size (PaliGemma: "
             "vocab_size=257152, Gemma: 256000), or load with skip=('llm/embedder/.*',) to keep the "
             "embeddings freshly initialised.",
}


def _merge(params, loaded: dict, *, under: tuple, exclude: tuple = (), skip: Iterable[str] = (), source: str,
           strict: bool = False):
    """Copies `loaded` (flat names relative to `under`) into `params`, checking shapes.

    Parameters matching a `skip` regex keep their current (fresh) value. strict: names of
    `loaded` that the model does not use are errors too (else they are logged).
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
        if current.dtype == np.int8 and value.dtype != np.int8:
            raise CheckpointMismatchError(
                f"{source}: {rel} is int8 in the model (int8_kernels) but {value.dtype} in the checkpoint: load "
                "into the float network, then palimix.models.quantize.quantize_params(params, config).")
        if tuple(value.shape) != tuple(current.shape):
            mismatched.append((rel, tuple(value.shape), tuple(current.shape)))
            continue
        loaded_names.add(rel)
        value = value.astype(current.dtype)
        sharding = getattr(current, "sharding", None)
        updated[name] = jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)
    unused = sorted(set(loaded) - loaded_names - {n for n in loaded if any(r.fullmatch(n) for r in skip_res)})
    if missing or mismatched or (strict and unused):
        raise CheckpointMismatchError(_mismatch_message(source, missing, mismatched, unused if strict else []))
    if unused:
        logging.info("%s: %d parameters not used by the model, e.g. %s", source, len(unused), unused[:5])
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in updated.items()})
    return nested


def _mismatch_message(source: str, missing: list, mismatched: list, unused: list) -> str:
    lines = [f"{source} does not fit the model:"]
    lines += [f"  {n}: checkpoint {a} vs model {b}" for n, a, b in mismatched[:20]]
    lines += [f"  {n}: not in the checkpoint" for n in missing[:20]]
    lines += [f"  {n}: in the checkpoint, not in the model" for n in unused[:20]]
    listed = min(len(mismatched), 20) + min(len(missing), 20) + min(len(unused), 20)
    if len(missing) + len(mismatched) + len(unused) > listed:
        lines.append(f"  ... {len(missing) + len(mismatched) + len(unused) - listed} more")
    hints = {_VOCABULARY_HINTS[n] for n, _, _ in mismatched if n in _VOCABULARY_HINTS}
    lines += [_HINTS[h] for h in sorted(hints)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# big_vision ViT (.npz).


def read_npz(checkpoint: str) -> dict:
    """Flat {name: array} of a big_vision .npz: the params of a saved train state ("params/"
    or "opt/target/" roots dropped), or of a sub-model with big_vision's colon syntax
    ("path.npz:img"); bfloat16 arrays (numpy stores them as 2-byte voids) come back as such."""
    path, sep, sub = checkpoint.partition(".npz:")
    path = path + ".npz" if sep else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such checkpoint: {path}")
    with np.load(path, allow_pickle=False) as npz:
        flat = {k: _recover_bfloat16(npz[k]) for k in npz.files}
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
    return flat


def _recover_bfloat16(array: np.ndarray) -> np.ndarray:
    # np.save writes ml_dtypes' bfloat16 as "|V2"; big_vision's .bf16.npz files hold these.
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        return array.view(jax.numpy.bfloat16)
    return array


def read_big_vision_npz(checkpoint: str) -> dict:
    """Flat {name: array} of the ViT params in a big_vision .npz ("path.npz:sub/model" ok)."""
    flat = read_npz(checkpoint)
    if not any(k.startswith("Transformer/") for k in flat):
        path = checkpoint.partition(".npz:")[0]
        path = path if path.endswith(".npz") else path + ".npz"
        towers = sorted({k.split("/", 1)[0] for k in flat if "/Transformer/" in k})
        hint = f" It holds sub-models {towers}: load e.g. '{path}:{towers[0]}'." if towers else ""
        raise CheckpointMismatchError(f"{checkpoint} has no ViT ('Transformer/...' parameters).{hint}")
    return flat


def _fix_vit_layout(flat: dict, model_posemb_shape: Optional[tuple]) -> dict:
    """Old names, class-token and resolution changes -> our layout (scanned or
    per-block blocks: `scan_layout.match_layout` brings them to the model's)."""
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
    # big_vision's scan=True files stack the blocks ("Transformer/encoderblock"): as the model holds them.
    vit_flat = {k[len(prefix):]: v for k, v in model_flat.items() if k.startswith(prefix)}
    flat = scan_layout.match_layout(flat, vit_flat, stacks=(scan_layout.VIT_STACK,), source=source)
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
    from etils import epath

    item = os.path.join(ckpt_dir, "state") if os.path.isdir(os.path.join(ckpt_dir, "state")) else ckpt_dir
    checkpointer = ocp.PyTreeCheckpointer()
    # As numpy arrays: no device, no sharding to recreate (the caller puts each where its
    # model's parameter lives).
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(os.path.abspath(item))).tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    tree = checkpointer.restore(os.path.abspath(item), restore_args=as_numpy)
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
    # t5x's mT5 files hold one subtree per layer: stacked when the model scans its layers.
    flat = scan_layout.match_layout(flat, _flatten(params), source=source)
    return _merge(params, flat, under=(), exclude=IMAGE_SIDE, skip=skip, source=source)


# ----------------------------------------------------------------------------------------
# big_vision PaliGemma (.npz): `img/...` (ViT + `img/head`, the projection into Gemma's
# width) and `llm/...` (Gemma). big_vision scans both towers, so its files stack their
# blocks along a leading depth axis; palimix's modules hold them so with scan_layers,
# else one subtree per block (`scan_layout.match_layout` converts).

GEMMA = ("llm",)
# big_vision's stacks of blocks, which its files hold stacked along a leading depth axis.
_BIG_VISION_STACKS = (f"img/{scan_layout.VIT_STACK}", "llm/layers")


def _paligemma_image_side(flat: dict, model_flat: dict) -> dict:
    """`img/...` of a PaliGemma file through the ViT loader's fixes (pre-linen names, a
    resolution change), keeping `img/head`: here it is the projection, not a classifier."""
    image = {k[len("img/"):]: v for k, v in flat.items() if k.startswith("img/")}
    if not image:
        return {}
    head = {k: image.pop(k) for k in list(image) if k.startswith("head/")}
    posemb = model_flat.get("img/pos_embedding")
    image = _fix_vit_layout(image, None if posemb is None else tuple(posemb.shape))
    return {f"img/{k}": v for k, v in {**image, **head}.items()}


def load_paligemma(checkpoint, params, *, skip: Iterable[str] = ()):
    """`params` of palimix's `PaliGemma` with every parameter from a big_vision PaliGemma
    checkpoint: a .npz path (float32 or bfloat16, plain params or a saved train state),
    or a flat dict with big_vision's "/"-joined names.

    Every model parameter must be in the checkpoint with its shape and every checkpoint
    parameter must be used, else `CheckpointMismatchError` names them. skip: regexes of
    names to keep as they are (e.g. 'llm/embedder/.*' for another vocabulary).
    """
    source = checkpoint if isinstance(checkpoint, str) else "PaliGemma parameters"
    flat = read_npz(checkpoint) if isinstance(checkpoint, str) else _flatten(checkpoint)
    if not any(k.startswith("img/") for k in flat) or not any(k.startswith("llm/") for k in flat):
        tops = sorted({k.split("/", 1)[0] for k in flat})
        raise CheckpointMismatchError(
            f"{source} is not a PaliGemma checkpoint (it needs 'img/...' and 'llm/...'; it has {tops}). "
            "A Gemma-only file loads with load_gemma, a ViT with load_vit.")
    model_flat = _flatten(params)
    flat = {**{k: v for k, v in flat.items() if not k.startswith("img/")},
            **_paligemma_image_side(flat, model_flat)}
    flat = scan_layout.match_layout(flat, model_flat, source=source)
    return _merge(params, flat, under=(), skip=skip, source=source, strict=True)


def _gemma_part(flat: dict, source: str) -> dict:
    """The Gemma parameters under "llm/": from a PaliGemma file's `llm/...` or from a
    Gemma-only file (big_vision's `embedder/...`, `layers/...`, `final_norm/...`)."""
    if any(k.startswith("llm/") for k in flat):
        return {k: v for k, v in flat.items() if k.startswith("llm/")}
    if "embedder/input_embedding" in flat:
        return {f"llm/{k}": v for k, v in flat.items()}
    tops = sorted({k.split("/", 1)[0] for k in flat})
    raise CheckpointMismatchError(
        f"{source} holds no Gemma ('llm/...' or 'embedder/input_embedding'); it has {tops}.")


def _extend_vocabulary(flat: dict, model_flat: dict) -> dict:
    """A checkpoint with fewer embedding rows than the model (Gemma's 256,000 pieces under
    PaliGemma's 257,152 with the <loc>/<seg> tokens): its rows first, the model's own
    (fresh) rows for the rest -- what big_vision does when it widens the vocabulary."""
    name = "llm/embedder/input_embedding"
    if name not in flat or name not in model_flat:
        return flat
    rows, model_rows = flat[name].shape[0], model_flat[name].shape[0]
    if rows >= model_rows or flat[name].shape[1:] != model_flat[name].shape[1:]:
        return flat  # equal, or a mismatch that _merge reports
    logging.info("Gemma: %d embedding rows from the checkpoint, %d kept from the model", rows, model_rows - rows)
    fresh = np.asarray(jax.device_get(model_flat[name]))[rows:].astype(flat[name].dtype)
    return {**flat, name: np.concatenate([np.asarray(flat[name]), fresh])}


def load_gemma(checkpoint, params, *, skip: Iterable[str] = ()):
    """`params` with the language model (`llm/...`) from a Gemma checkpoint; the image side
    (`img/...`, its projection included) keeps its values: a warm start with a fresh or a
    SigLIP ViT (`load_vit("siglip.npz:img", ...)`).

    checkpoint: a PaliGemma .npz (its `llm/` part), "path.npz:llm", a big_vision Gemma-only
    .npz, or a flat dict of either. A smaller vocabulary fills the model's first rows.
    """
    source = checkpoint if isinstance(checkpoint, str) else "Gemma parameters"
    flat = read_npz(checkpoint) if isinstance(checkpoint, str) else _flatten(checkpoint)
    model_flat = _flatten(params)
    flat = _extend_vocabulary(_gemma_part(flat, source), model_flat)
    flat = scan_layout.match_layout(flat, model_flat, source=source)
    return _merge(params, flat, under=(), exclude=IMAGE_SIDE, skip=skip, source=source, strict=True)


def save_paligemma(params, path: str, *, dtype=None) -> str:
    """Writes `params` as big_vision writes PaliGemma: one .npz, "/"-joined names, the ViT
    blocks stacked under `img/Transformer/encoderblock` and Gemma's under `llm/layers`.
    dtype: e.g. "bfloat16" for a half-size file like big_vision's `.bf16.npz` releases.
    The file appears whole (written beside, then renamed). Returns the path."""
    flat = {k: np.asarray(jax.device_get(v)) for k, v in _flatten(params).items()}
    flat = scan_layout.stack_flat(flat, dict.fromkeys(_BIG_VISION_STACKS))
    if dtype is not None:
        flat = {k: v.astype(jax.numpy.dtype(dtype)) for k, v in flat.items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
        np.savez(f, **dict(sorted(flat.items())))
    os.replace(partial, path)
    return path


# ----------------------------------------------------------------------------------------
# Hugging Face BLIP-2 / mBLIP Q-Former (.safetensors or .npz with HF names).

_HF_LAYER_NORMS = ("layernorm", "LayerNorm")


def read_safetensors(path: str) -> dict:
    """Flat {HF name: array} of a `.safetensors` file or of every `*.safetensors` shard
    in a folder (bfloat16 tensors read as such, through JAX)."""
    from safetensors import safe_open

    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"No .safetensors files in {path}")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"No such checkpoint: {path}")
    flat = {}
    for file in files:
        with safe_open(file, framework="flax") as f:
            flat.update({k: np.asarray(f.get_tensor(k)) for k in f.keys()})
    return flat


def read_torch_named(path: str) -> dict:
    """Flat {PyTorch name: array} of a converted PyTorch state dict: an `.npz` or a
    `.safetensors` file (or folder of shards) keyed by the state dict's dotted names."""
    return read_npz(path) if path.endswith(".npz") else read_safetensors(path)


def hf_bridge_name(name: str) -> tuple[str, bool]:
    """A Hugging Face BLIP-2 name -> (palimix name, whether the array is transposed):
    "." becomes "/", a Linear's `weight` [out, in] the `kernel` [in, out], a LayerNorm's
    `weight` its `scale`."""
    parts = name.split(".")
    if parts[-1] != "weight":
        return "/".join(parts), False
    if len(parts) > 1 and parts[-2] in _HF_LAYER_NORMS:
        return "/".join(parts[:-1] + ["scale"]), False
    return "/".join(parts[:-1] + ["kernel"]), True


def _hf_bridge_part(flat: dict, source: str) -> dict:
    bridge = {}
    for name, value in flat.items():
        if name.split(".", 1)[0] not in BRIDGE_PARAMS:
            continue
        ours, transpose = hf_bridge_name(name)
        value = np.asarray(value)
        if transpose and value.ndim != 2:
            raise CheckpointMismatchError(f"{source}: {name} has shape {value.shape}; a Linear weight is 2-D.")
        bridge[ours] = value.T if transpose else value
    if not bridge:
        tops = sorted({k.split(".", 1)[0] for k in flat})
        raise CheckpointMismatchError(
            f"{source} holds no Q-Former (Hugging Face names {', '.join(BRIDGE_PARAMS)}); it has {tops}.")
    logging.info("%s: %d Q-Former parameters, %d other keys left alone", source, len(bridge), len(flat) - len(bridge))
    return bridge


def load_qformer(checkpoint, params):
    """`params` with the Q-Former bridge (`query_tokens`, `qformer/...`,
    `language_projection/...`) from a converted BLIP-2 / mBLIP checkpoint with Hugging
    Face names: a `.safetensors` file or folder of shards, an `.npz`, or a flat dict.
    Everything else in `params` (ViT, language model) keeps its values."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        source, flat = "Q-Former parameters", dict(checkpoint)
    else:
        source = os.fspath(checkpoint)
        flat = read_torch_named(source)
    if "query_tokens" not in _flatten(params):
        raise CheckpointMismatchError(f"the model has no Q-Former to load {source} into: build it with bridge='qformer'.")
    others = tuple(k for k in params if k not in BRIDGE_PARAMS)
    return _merge(params, _hf_bridge_part(flat, source), under=(), exclude=others, source=source, strict=True)


# ----------------------------------------------------------------------------------------
# A palimix run's own checkpoint (what `palimix train --model_dir DIR` writes): DIR/run.json
# records the network's whole config ("model"/"config"), DIR/checkpoints/<step>/state/
# the train state (orbax: params, optimizer state, step).


def read_palimix_run(path: str) -> tuple:
    """(the run's network config, flat {name: array} of its parameters) of a palimix run:
    its model dir (the latest checkpoint) or one of its `checkpoints/<step>` folders."""
    import json

    from palimix.models import configs

    path = os.path.abspath(path)
    if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
        model_dir, step_dir = os.path.dirname(os.path.dirname(path)), path
    else:
        model_dir, step_dir = path, _latest_palimix_step(path)
    run_json = os.path.join(model_dir, "run.json")
    if not os.path.isfile(run_json):
        raise CheckpointMismatchError(f"{model_dir} has no run.json: not a `palimix train` model dir.")
    with open(run_json, encoding="utf-8") as f:
        model = json.load(f).get("model", {})
    if "config" not in model:
        raise CheckpointMismatchError(f"{run_json} records no model config (written by an older palimix).")
    return configs.from_dict(model["config"]), read_t5x_checkpoint(step_dir)


def _latest_palimix_step(model_dir: str) -> str:
    folder = os.path.join(model_dir, "checkpoints")
    # orbax names a finished step by its number (unfinished ones carry a tmp suffix).
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    if not steps:
        raise CheckpointMismatchError(f"{model_dir} holds no finished palimix checkpoint (expected "
                                      f"{folder}/<step>/, as `palimix train --model_dir` writes).")
    return os.path.join(folder, str(steps[-1]))


def _int8_as_in(flat: dict, source_config, model_flat: dict) -> dict:
    """The run's parameters with its language model stored as the model stores it: a
    float LM quantized for an int8 network (`int8_kernels`), an int8 LM dequantized for a
    float one, by the run's own config (which says each weight's input axes)."""
    from palimix.models import quantize

    def has_int8(tree: dict) -> bool:
        return any(np.asarray(v).dtype == np.int8 for v in tree.values())

    model_int8, source_int8 = has_int8(model_flat), has_int8(flat)
    if model_int8 and not source_int8:
        return _flatten(quantize.quantize_params(flat, quantize.with_int8_kernels(source_config, True)))
    if source_int8 and not model_int8:
        return _flatten(quantize.dequantize_params(flat, source_config))
    return flat


def load_palimix(checkpoint, params):
    """`params` with every parameter of a palimix run (`read_palimix_run`: a model dir or
    one checkpoint step), shapes checked, strict both ways, except: LoRA adapters the
    run lacks keep their initial values (B = 0: the adapted model starts as the run's), and
    an int8 network takes a float run's LM quantized (or the other way round). Scanned and
    unscanned layouts convert. Continues mBLIP's warm-up run in the instruct stage."""
    from palimix.models import lora

    source = os.fspath(checkpoint)
    source_config, flat = read_palimix_run(source)
    model_flat = _flatten(params)
    flat = _int8_as_in(flat, source_config, model_flat)
    flat = scan_layout.match_layout(flat, model_flat, source=source)
    fresh_adapters = [re.escape(n) for n in model_flat if re.fullmatch(lora.TRAINABLE_PATTERN, n) and n not in flat]
    if fresh_adapters:
        logging.info("%s: %d LoRA adapter parameters start fresh.", source, len(fresh_adapters))
    return _merge(params, flat, under=(), skip=fresh_adapters, source=source, strict=True)


# ----------------------------------------------------------------------------------------
# Warm start: one table of checkpoint formats, for `palimix train --init_checkpoint` and
# `palimix convert-checkpoint` (which writes what a format loads as a t5x checkpoint).


def _everything(name: str) -> bool:
    return True


def _language_model(name: str) -> bool:
    return name.split("/", 1)[0] not in IMAGE_SIDE


def _under(*tops: str):
    return lambda name: name.split("/", 1)[0] in tops


@dataclasses.dataclass(frozen=True)
class WarmStartFormat:
    """A public checkpoint layout: its loader `load(path, params) -> params` (strict: it
    raises `CheckpointMismatchError` naming what is missing, mis-shaped or extra), which
    parameters it sets (`sets(flat name) -> bool`; the others keep their initial values),
    and one line for help texts."""

    load: Callable
    sets: Callable[[str], bool]
    description: str


WARM_START_FORMATS = {
    "paligemma": WarmStartFormat(load_paligemma, _everything,
                                 "big_vision PaliGemma .npz: every parameter (img/... and llm/...)"),
    "gemma": WarmStartFormat(load_gemma, _under(*GEMMA),
                             "big_vision Gemma (a PaliGemma .npz's llm/ part, or a Gemma-only .npz): "
                             "the language model; the ViT and its projection as initialised"),
    "vit": WarmStartFormat(load_vit, _under(*IMAGE_TOWER),
                           "big_vision ViT .npz ('file.npz:img' for a sub-model): the image tower "
                           "of a PaLI model; the rest as initialised"),
    "mt5": WarmStartFormat(load_mt5, _language_model,
                           "t5x mT5 / T5 1.1 checkpoint: the text side of a PaLI model; the ViT and "
                           "its projection as initialised"),
    "qformer": WarmStartFormat(load_qformer, _under(*BRIDGE_PARAMS),
                               "Hugging Face BLIP-2 / mBLIP (.safetensors or .npz): the Q-Former bridge of a "
                               "bridge='qformer' model; the rest as initialised"),
    "palimix": WarmStartFormat(load_palimix, _everything,
                               "a palimix run (the --model_dir of `palimix train`, or one checkpoints/<step>): "
                               "every parameter; LoRA adapters it lacks start fresh, its LM is quantized for an "
                               "int8 network (and the other way round)"),
}


def warm_start_format(name: str) -> WarmStartFormat:
    """The table entry for `name`, or a UsageError listing the formats."""
    if name not in WARM_START_FORMATS:
        known = "; ".join(f"{k}: {v.description}" for k, v in WARM_START_FORMATS.items())
        raise UsageError(f"Unknown checkpoint format {name!r}. Formats: {known}."
                         + close_matches_hint(name, WARM_START_FORMATS))
    return WARM_START_FORMATS[name]


def warm_start(params, checkpoint: str, format: str):
    """`params` (freshly initialised) with the parameters a `format` checkpoint holds."""
    return warm_start_format(format).load(checkpoint, params)


def warm_started_part(params, format: str) -> dict:
    """The parameters of `params` that a `format` warm start sets, nested (the ViT's for
    "vit", Gemma's for "gemma", all for "paligemma")."""
    sets = warm_start_format(format).sets
    flat = {k: v for k, v in _flatten(params).items() if sets(k)}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


# `t5x.train`'s `RestoreCheckpointConfig.assignment_map` for a `save_t5x` checkpoint:
# restore every parameter it holds by its own name; the optimizer state (which it does
# not hold) starts from scratch. t5x's `fallback_to_scratch` needs a map (any state
# transformation) to run at all.
T5X_ASSIGNMENT_MAP = ((r"state/param_states/.*", None),)


def save_t5x(variables, out_dir: str, *, step: int = 0) -> str:
    """Writes `variables` (`{"params": ..., "params_axes": ...}`, or a part of them) as a
    t5x checkpoint `out_dir/checkpoint_<step>` with t5x's own `Checkpointer`: the
    parameters and the step, no optimizer state. `t5x.train` restores it with
    `RestoreCheckpointConfig(mode='specific', path=..., fallback_to_scratch=True,
    assignment_map=T5X_ASSIGNMENT_MAP)`: what the file lacks (the optimizer state, the
    parameters a partial warm start leaves out) starts from scratch. Returns the
    checkpoint folder."""
    import jax.numpy as jnp
    from t5x import checkpoints as t5x_checkpoints
    from t5x import partitioning as t5x_partitioning
    from t5x import train_state as t5x_train_state

    from palimix.models import t5x_model

    state = t5x_train_state.InferenceState.create(variables).replace_step(jnp.asarray(step, jnp.int32))
    partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1,
                                                   logical_axis_rules=t5x_model.pali_logical_axis_rules())
    checkpointer = t5x_checkpoints.Checkpointer(state, partitioner, out_dir)
    checkpointer.save(state)
    return os.path.join(out_dir, f"checkpoint_{step}")


# ----------------------------------------------------------------------------------------
# MaskGIT's VQGAN tokenizer (flax msgpack).


def read_maskgit_checkpoint(checkpoint: str) -> dict:
    """Flat {name: array} of a MaskGIT tokenizer checkpoint: the bytes of
    `flax.serialization.to_bytes(variables)` (MaskGIT's `utils.restore_from_path` reads them
    back with `from_bytes(None, ...)`), holding {"params": {...}} or the params themselves."""
    from etils import epath
    from flax import serialization

    path = epath.Path(checkpoint)
    if not path.exists():
        raise CheckpointMismatchError(f"VQGAN checkpoint {checkpoint} does not exist.")
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except (ValueError, TypeError) as e:  # msgpack's errors for bytes that are not a msgpack map
        raise CheckpointMismatchError(f"{checkpoint} is not a flax msgpack checkpoint ({e}).") from e
    if not isinstance(tree, Mapping):
        raise CheckpointMismatchError(f"{checkpoint} holds a {type(tree).__name__}, not MaskGIT's variables.")
    return _flatten(tree.get("params", tree))


def load_vqgan(checkpoint, params, *, under: tuple = ()):
    """MaskGIT's VQGAN tokenizer weights (`maskgit/nets/vqgan_tokenizer.py` names:
    `encoder/...`, `decoder/...`, `quantizer/codebook`) into `palimix.models.vqgan.Vqgan`
    params (or into the tokenizer part of a larger tree, at `under`). `checkpoint`: a
    MaskGIT checkpoint file (see `read_maskgit_checkpoint`) or a dict of its params.
    Strict: every parameter must be there with the model's shape, and nothing else."""
    if isinstance(checkpoint, Mapping):
        flat, source = _flatten(checkpoint.get("params", checkpoint)), "the VQGAN parameters"
    else:
        flat, source = read_maskgit_checkpoint(os.fspath(checkpoint)), os.fspath(checkpoint)
    return _merge(params, flat, under=under, source=source, strict=True)


# ----------------------------------------------------------------------------------------
# The perceptual loss's network: torchvision VGG16 features + LPIPS's linear heads.

_TORCH_CONV = re.compile(r"features\.(\d+)\.(weight|bias)")
_LPIPS_HEAD = re.compile(r"lin(\d+)\.model\.1\.weight")


def _vgg16_part(flat: dict, source: str) -> dict:
    """torchvision's `features.N.weight` [out, in, kh, kw] / `.bias` -> `vgg/features_N/kernel`
    [kh, kw, in, out] / `bias`; every other key (the classifier) is left out."""
    ours = {}
    for name, value in flat.items():
        match = _TORCH_CONV.fullmatch(name)
        if not match:
            continue
        value = np.asarray(value)
        if match[2] == "weight" and value.ndim != 4:
            raise CheckpointMismatchError(f"{source}: {name} has shape {value.shape}; a conv weight is 4-D.")
        kernel = np.transpose(value, (2, 3, 1, 0)) if match[2] == "weight" else value
        ours[f"vgg/features_{match[1]}/{'kernel' if match[2] == 'weight' else 'bias'}"] = kernel
    if not ours:
        raise CheckpointMismatchError(f"{source} holds no torchvision VGG16 features (features.N.weight); "
                                      f"it has {sorted(flat)[:5]}.")
    return ours


def _lpips_heads(flat: dict, source: str) -> dict:
    """LPIPS's `lin{k}.model.1.weight` [1, C, 1, 1] -> `lin{k}` [C]; nothing else may be there."""
    heads, others = {}, []
    for name, value in flat.items():
        match = _LPIPS_HEAD.fullmatch(name)
        if match:
            heads[f"lin{match[1]}"] = np.asarray(value).reshape(-1)
        else:
            others.append(name)
    if others or not heads:
        raise CheckpointMismatchError(f"{source} is not LPIPS's linear heads (lin{{k}}.model.1.weight); "
                                      f"unexpected keys: {others[:5]}.")
    return heads


def load_lpips_vgg16(checkpoint, params, *, lin=None):
    """`palimix.models.perceptual.Lpips` params from torchvision's VGG16 (a converted
    `vgg16().state_dict()`: `.safetensors` or `.npz` with `features.N.weight/bias`; its
    classifier is ignored) and, optionally, LPIPS's linear heads (`lin`: a converted
    `lpips/weights/v0.1/vgg.pth`, `lin{k}.model.1.weight`). Without `lin` the heads keep
    their values in `params` (1 when freshly initialised). Every conv must be there with
    the model's shape."""
    source = os.fspath(checkpoint)
    loaded = _vgg16_part(read_torch_named(source), source)
    params = _merge(params, loaded, under=(), exclude=tuple(k for k in params if k != "vgg"), source=source,
                    strict=True)
    if lin is None:
        return params
    lin_source = os.fspath(lin)
    heads = _lpips_heads(read_torch_named(lin_source), lin_source)
    return _merge(params, heads, under=(), exclude=("vgg",), source=lin_source, strict=True)
