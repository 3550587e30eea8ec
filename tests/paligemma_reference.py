"""big_vision's PaliGemma in plain numpy, on the flat "/"-keyed dict of its .npz files.

An independent reference for palimix's `PaliGemma` network and checkpoint loader, written
from the math of big_vision's `models/proj/paligemma/paligemma.py` (+ `gemma_bv.py`),
`models/ppp/gemma.py` and `models/vit.py` -- not from palimix's code, and not by
importing big_vision. It computes in float64, so it is the ground truth that palimix's
float32 logits are compared with.

What it encodes (each line is a place where a port can go wrong):
  * ViT (`img/...`): stride-p patch "conv" `embedding`, learned `pos_embedding`, pre-LN
    blocks (LayerNorm eps 1e-6, biased q/k/v/out, q scaled by 1/sqrt(head_dim), tanh GeLU
    MLP), `Transformer/encoder_norm`, then `head` applied to every token (pool_type
    "none"): the head is PaliGemma's image->text projection. Blocks are stacked along a
    leading axis (`Transformer/encoderblock/...`, big_vision's scan=True).
  * Gemma (`llm/...`, layers stacked under `llm/layers/...`): text embeddings scaled by
    sqrt(width), image tokens not; RMSNorm eps 1e-6 applied as `1 + scale`; rotary
    embeddings on the two halves of each head (not interleaved), wavelength 10,000,
    positions 0..N-1 over image ++ text; q scaled by head_dim**-0.5 after the rotation;
    `qkv_einsum` [3, N, D, H] when num_kv_heads == num_heads, else `q_einsum` [N, D, H] +
    `kv_einsum` [2, K, D, H] with query head n reading kv head n // (N / K);
    `attn_vec_einsum` [N, H, D]; GeGLU with `gating_einsum` [2, D, F] (gate = [0], tanh
    GeLU) and `linear` [F, D]; `final_norm`; logits tied to `embedder/input_embedding`.
  * Prefix LM: `make_attn_mask(input_mask, mask_ar)` -- a token attends to valid tokens
    whose cumulative mask_ar is <= its own; image tokens have mask_ar 0.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6  # LayerNorm (flax default) and Gemma's RMSNorm both use 1e-6.
ROPE_WAVELENGTH = 10_000.0


# ----------------------------------------------------------------------------------------
# Building blocks.


def gelu_tanh(x):
    """flax's nn.gelu default (approximate=True): the tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * scale + bias


def rms_norm(x, scale):
    """Gemma's RMSNorm: the stored `scale` is an offset from 1 (zero-initialised)."""
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + EPS) * (1.0 + scale)


def rope(x, positions):
    """Rotary embedding of x [B, L, heads, H] at positions [B, L]: the first half of each
    head is rotated against the second half (frequencies wavelength**(-2i/H))."""
    half = x.shape[-1] // 2
    timescale = ROPE_WAVELENGTH ** (2.0 * np.arange(half) / x.shape[-1])
    angle = positions[..., None, None] / timescale  # [B, L, 1, half]
    sin, cos = np.sin(angle), np.cos(angle)
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def make_attn_mask(input_mask, mask_ar):
    """bool [B, N, N]: query i sees key j iff both are valid and cumsum(mask_ar)[j] <= [i]."""
    level = np.cumsum(mask_ar, axis=1)
    causal = level[:, None, :] <= level[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return causal & valid


def _layer(flat, prefix, i):
    """Parameter getter for layer i of a block stack stored along a leading axis."""
    return lambda name: np.asarray(flat[f"{prefix}/{name}"][i], np.float64)


def _get(flat, name):
    return np.asarray(flat[name], np.float64)


# ----------------------------------------------------------------------------------------
# The image tower (with its head = the projection into Gemma's width).


def _vit_block(p, x):
    y = layer_norm(x, p("LayerNorm_0/scale"), p("LayerNorm_0/bias"))
    att = "MultiHeadDotProductAttention_0"
    q, k, v = (np.einsum("bnd,dhk->bnhk", y, p(f"{att}/{n}/kernel")) + p(f"{att}/{n}/bias")
               for n in ("query", "key", "value"))
    q = q / np.sqrt(q.shape[-1])
    probs = softmax(np.einsum("bqhk,bshk->bhqs", q, k))
    out = np.einsum("bhqs,bshk->bqhk", probs, v)
    x = x + np.einsum("bqhk,hkd->bqd", out, p(f"{att}/out/kernel")) + p(f"{att}/out/bias")
    y = layer_norm(x, p("LayerNorm_1/scale"), p("LayerNorm_1/bias"))
    h = gelu_tanh(y @ p("MlpBlock_0/Dense_0/kernel") + p("MlpBlock_0/Dense_0/bias"))
    return x + h @ p("MlpBlock_0/Dense_1/kernel") + p("MlpBlock_0/Dense_1/bias")


def image_tokens(flat, images):
    """float [B, S, S, 3] images -> [B, (S/p)^2, llm width] tokens (after `img/head`)."""
    kernel = _get(flat, "img/embedding/kernel")  # [p, p, 3, width]
    p = kernel.shape[0]
    b, s, _, c = images.shape
    g = s // p
    patches = np.asarray(images, np.float64).reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("bijpqc,pqcd->bijd", patches, kernel).reshape(b, g * g, -1)
    x = x + _get(flat, "img/embedding/bias") + _get(flat, "img/pos_embedding")
    depth = flat["img/Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
    for i in range(depth):
        x = _vit_block(_layer(flat, "img/Transformer/encoderblock", i), x)
    x = layer_norm(x, _get(flat, "img/Transformer/encoder_norm/scale"),
                   _get(flat, "img/Transformer/encoder_norm/bias"))
    return x @ _get(flat, "img/head/kernel") + _get(flat, "img/head/bias")


# ----------------------------------------------------------------------------------------
# Gemma.


def _gemma_attention(p, x, positions, mask, has_qkv):
    if has_qkv:
        w = p("attn/qkv_einsum/w")  # [3, N, D, H]
        q, k, v = (np.einsum("bld,ndh->blnh", x, w[j]) for j in range(3))
    else:
        q = np.einsum("bld,ndh->blnh", x, p("attn/q_einsum/w"))  # [N, D, H]
        kv = p("attn/kv_einsum/w")  # [2, K, D, H]
        k, v = (np.einsum("bld,kdh->blkh", x, kv[j]) for j in range(2))
    q = rope(q, positions) * q.shape[-1] ** -0.5
    k = rope(k, positions)
    group = q.shape[2] // k.shape[2]  # query heads per kv head: n -> kv head n // group
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqnh,bsnh->bnqs", q, k)
    logits = np.where(mask[:, None], logits, -np.inf)
    encoded = np.einsum("bnqs,bsnh->bqnh", softmax(logits), v)
    return np.einsum("bqnh,nhd->bqd", encoded, p("attn/attn_vec_einsum/w"))


def _gemma_block(p, x, positions, mask, has_qkv):
    x = x + _gemma_attention(p, rms_norm(x, p("pre_attention_norm/scale")), positions, mask, has_qkv)
    y = rms_norm(x, p("pre_ffw_norm/scale"))
    gating = p("mlp/gating_einsum")  # [2, D, F]: [0] goes through GeLU, [1] is linear
    return x + (gelu_tanh(y @ gating[0]) * (y @ gating[1])) @ p("mlp/linear")


def text_embeddings(flat, tokens):
    table = _get(flat, "llm/embedder/input_embedding")
    return table[np.asarray(tokens)] * np.sqrt(table.shape[1])


def forward(flat, images, text, mask_ar, input_mask=None):
    """big_vision's `Model.__call__`: text logits [B, T, V] (float64).

    images [B, S, S, 3]; text int [B, T] (the model's input tokens); mask_ar int [B, T]
    (0: full attention within the prefix, 1: causal); input_mask bool [B, T] (default all
    valid, as big_vision's training forward)."""
    text = np.asarray(text)
    zimg = image_tokens(flat, images)
    x = np.concatenate([zimg, text_embeddings(flat, text)], axis=1)
    n_img = zimg.shape[1]
    b, n = x.shape[:2]
    if input_mask is None:
        input_mask = np.ones(text.shape, bool)
    mask_ar = np.concatenate([np.zeros((b, n_img), np.int64), np.asarray(mask_ar)], axis=1)
    input_mask = np.concatenate([np.ones((b, n_img), bool), np.asarray(input_mask, bool)], axis=1)
    mask = make_attn_mask(input_mask, mask_ar)
    positions = np.broadcast_to(np.arange(n, dtype=np.float64), (b, n))
    has_qkv = "llm/layers/attn/qkv_einsum/w" in flat
    depth = flat["llm/layers/pre_attention_norm/scale"].shape[0]
    for i in range(depth):
        x = _gemma_block(_layer(flat, "llm/layers", i), x, positions, mask, has_qkv)
    x = rms_norm(x[:, n_img:], _get(flat, "llm/final_norm/scale"))
    return x @ _get(flat, "llm/embedder/input_embedding").T


# ----------------------------------------------------------------------------------------
# Checkpoint files in big_vision's layout.


def checkpoint_shapes(*, image_size, patch_size, vit_width, vit_depth, vit_mlp_dim, vit_heads,
                      width, depth, mlp_dim, num_heads, num_kv_heads, head_dim, vocab_size) -> dict:
    """{key: shape} of a PaliGemma .npz as big_vision writes it (ViT and Gemma stacked)."""
    tokens = (image_size // patch_size) ** 2
    vit_head_dim = vit_width // vit_heads
    blk = "img/Transformer/encoderblock/"
    att = blk + "MultiHeadDotProductAttention_0/"
    shapes = {
        "img/embedding/kernel": (patch_size, patch_size, 3, vit_width),
        "img/embedding/bias": (vit_width,),
        "img/pos_embedding": (1, tokens, vit_width),
        "img/Transformer/encoder_norm/scale": (vit_width,),
        "img/Transformer/encoder_norm/bias": (vit_width,),
        "img/head/kernel": (vit_width, width),
        "img/head/bias": (width,),
        "llm/embedder/input_embedding": (vocab_size, width),
        "llm/final_norm/scale": (width,),
    }
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        shapes.update({f"{blk}{ln}/scale": (vit_depth, vit_width), f"{blk}{ln}/bias": (vit_depth, vit_width)})
    for name in ("query", "key", "value"):
        shapes[f"{att}{name}/kernel"] = (vit_depth, vit_width, vit_heads, vit_head_dim)
        shapes[f"{att}{name}/bias"] = (vit_depth, vit_heads, vit_head_dim)
    shapes[f"{att}out/kernel"] = (vit_depth, vit_heads, vit_head_dim, vit_width)
    shapes[f"{att}out/bias"] = (vit_depth, vit_width)
    shapes.update({
        f"{blk}MlpBlock_0/Dense_0/kernel": (vit_depth, vit_width, vit_mlp_dim),
        f"{blk}MlpBlock_0/Dense_0/bias": (vit_depth, vit_mlp_dim),
        f"{blk}MlpBlock_0/Dense_1/kernel": (vit_depth, vit_mlp_dim, vit_width),
        f"{blk}MlpBlock_0/Dense_1/bias": (vit_depth, vit_width),
    })
    lyr = "llm/layers/"
    if num_kv_heads == num_heads:
        shapes[lyr + "attn/qkv_einsum/w"] = (depth, 3, num_heads, width, head_dim)
    else:
        shapes[lyr + "attn/q_einsum/w"] = (depth, num_heads, width, head_dim)
        shapes[lyr + "attn/kv_einsum/w"] = (depth, 2, num_kv_heads, width, head_dim)
    shapes.update({
        lyr + "attn/attn_vec_einsum/w": (depth, num_heads, head_dim, width),
        lyr + "mlp/gating_einsum": (depth, 2, width, mlp_dim),
        lyr + "mlp/linear": (depth, mlp_dim, width),
        lyr + "pre_attention_norm/scale": (depth, width),
        lyr + "pre_ffw_norm/scale": (depth, width),
    })
    return shapes


def random_params(shapes: dict, seed: int = 0) -> dict:
    """float32 values with realistic scales: kernels ~ 1/sqrt(fan_in), norm scales and
    biases ~ 0.1 (so that `1 + scale` and every bias matter), embeddings ~ 1/sqrt(width)."""
    rng = np.random.default_rng(seed)
    contracted = {  # the axes each weight sums over (its fan-in), counted from the end
        "embedding/kernel": (-4, -3, -2), "query/kernel": (-3,), "key/kernel": (-3,),
        "value/kernel": (-3,), "out/kernel": (-3, -2), "Dense_0/kernel": (-2,),
        "Dense_1/kernel": (-2,), "head/kernel": (-2,), "q_einsum/w": (-2,), "kv_einsum/w": (-2,),
        "attn_vec_einsum/w": (-3, -2), "gating_einsum": (-2,), "linear": (-2,),
    }
    params = {}
    for key, shape in sorted(shapes.items()):
        axes = next((a for k, a in contracted.items() if key.endswith(k)), None)
        if axes is not None:  # (qkv_einsum ends with "kv_einsum/w": same fan-in, axis -2)
            std = 1.0 / np.sqrt(np.prod([shape[a] for a in axes]))
        elif key.endswith(("input_embedding", "pos_embedding")):
            std = 1.0 / np.sqrt(shape[-1])
        else:
            std = 0.1
        params[key] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def write_npz(path, params: dict) -> None:
    """Writes {key: array} as big_vision's .npz files are written (np.savez, "/" keys)."""
    np.savez(path, **params)
