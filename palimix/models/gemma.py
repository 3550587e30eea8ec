"""Gemma: a decoder-only language model with big_vision's parameter names and shapes
(`big_vision/models/ppp/gemma.py`), so that big_vision's PaliGemma checkpoints load
by renaming keys (and stacking/unstacking layers: see below).

The math, as in Gemma and big_vision: token embeddings scaled by sqrt(width) (the
caller's prefix embeddings, e.g. image tokens, are not); pre-norm blocks with RMSNorm
whose stored `scale` is applied as `1 + scale`; rotary positions on queries and keys
(the two halves of each head rotated against each other); queries scaled by
1/sqrt(head_dim); multi-query / grouped-query attention; a GeGLU MLP; a final RMSNorm;
logits from the transposed input embedding (tied weights).

Parameters (under the module's name, `llm` in `paligemma.PaliGemma`):

    embedder/input_embedding                 [vocab, width]           ("vocab", "embed")
    layers_N/pre_attention_norm/scale        [width]                  ("embed",)
    layers_N/attn/q_einsum/w                 [heads, width, head_dim] ("heads", "embed", "kv")
    layers_N/attn/kv_einsum/w                [2, kv_heads, width, head_dim]
                                                                      ("stack", "kv_heads", "embed", "kv")
      or, when kv_heads == heads, one
    layers_N/attn/qkv_einsum/w               [3, heads, width, head_dim] ("stack", "heads", "embed", "kv")
    layers_N/attn/attn_vec_einsum/w          [heads, head_dim, width] ("heads", "kv", "embed")
    layers_N/pre_ffw_norm/scale              [width]
    layers_N/mlp/gating_einsum               [2, width, mlp_dim]      ("stack", "embed", "mlp")
    layers_N/mlp/linear                      [mlp_dim, width]         ("mlp", "embed")
    final_norm/scale                         [width]

Layers are unstacked by default (`layers_0`, `layers_1`, ...; one flax module each,
like palimix's ViT and T5); with `scan_layers` they are one scanned `layers/...` tree
with a leading depth axis, as big_vision writes them (`palimix.models.scan_layout`
converts; the checkpoint loaders follow the model's layout).

Decoding cache (collection "cache"), per layer `layers_N/attn/{k_cache,v_cache}`
`[B, kv_heads, head_dim, cache_length]` (`CACHE_LAYOUT`; batch first, so beam search
can reorder rows); scanned, one `layers/attn/{k_cache,v_cache}` `[B, depth, ...]`
(the depth axis second, as big_vision's: still batch first).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from palimix.models import layers, lora, quantize
from palimix.models.configs import GemmaConfig

# The decoding cache's layout in `layers.dot_product_attention`'s letters (batch, kv
# heads, head dim, slots): slots last, so that a decoding step's products run along
# contiguous memory and its cost barely grows with the number of cached image tokens
# (t5.CACHE_LAYOUT likewise).
CACHE_LAYOUT = "bhdk"


def _fan_in_init(in_axis, out_axis, batch_axis=()):
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis,
                                            out_axis=out_axis, batch_axis=batch_axis)


def rotary_embedding(x, positions, max_wavelength: float):
    """Rotates `x [B, T, heads, head_dim]` by `positions [B, T]` (RoPE, in float32).

    Feature i of the first half and feature i of the second half form a pair rotated
    by the angle position / max_wavelength^(2i / head_dim).
    """
    half = x.shape[-1] // 2
    inverse_timescale = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angles = positions.astype(jnp.float32)[..., None, None] * inverse_timescale  # [B, T, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


class GemmaRMSNorm(nn.Module):
    """RMSNorm whose `scale` (zero-initialised) multiplies as `1 + scale`; in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = layers.param_with_axes("scale", nn.initializers.zeros, (x.shape[-1],), self.param_dtype,
                                       axes=("embed",))
        x = jnp.asarray(x, jnp.float32)
        normed = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return jnp.asarray(normed * (1.0 + jnp.asarray(scale, jnp.float32)), self.dtype)


class Embedder(nn.Module):
    """`input_embedding [vocab, width]`: token embeddings in, tied logits out."""

    vocab_size: int
    width: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    int8: bool = False  # an int8 table with one scale per token (palimix.models.quantize)

    def setup(self):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0)
        shape, axes = (self.vocab_size, self.width), ("vocab", "embed")
        if self.int8:
            self.input_embedding, self.scale = quantize.int8_params("input_embedding", init, shape, axes, (1,),
                                                                    self.param_dtype)
        else:
            self.input_embedding = layers.param_with_axes("input_embedding", init, shape, self.param_dtype, axes=axes)

    def encode(self, tokens):
        """Token ids `[B, T]` -> embeddings times sqrt(width) (Gemma's input scaling)."""
        x = jnp.take(jnp.asarray(self.input_embedding, self.dtype), tokens.astype(jnp.int32), axis=0)
        if self.int8:
            x = x * jnp.take(jnp.asarray(self.scale, self.dtype), tokens.astype(jnp.int32), axis=0)[..., None]
        return layers.constrain(x * jnp.sqrt(self.width).astype(self.dtype), ("batch", "length", "embed"))

    def decode(self, x):
        """Hidden states `[B, T, width]` -> float32 logits `[B, T, vocab]`."""
        logits = jnp.einsum("btd,vd->btv", x, jnp.asarray(self.input_embedding, self.dtype),
                            preferred_element_type=jnp.float32)
        if self.int8:  # the per-token scale is the logits' per-output-channel scale
            logits = logits * jnp.asarray(self.scale, jnp.float32)
        return layers.constrain(logits, ("batch", "length", "vocab"))


class EinsumWeight(nn.Module):
    """A module holding one einsum weight `w` (big_vision's `Einsum` parameter layout)."""

    shape: tuple
    axes: tuple
    init: layers.Initializer
    param_dtype: jnp.dtype = jnp.float32
    in_axes: tuple = ()  # the axes the einsum contracts with the input (int8: scaled per the others)
    int8: bool = False  # stored in int8 (palimix.models.quantize)

    @nn.compact
    def __call__(self):
        return quantize.weight("w", self.init, self.shape, self.axes, in_axes=self.in_axes, int8=self.int8,
                               dtype=self.param_dtype, param_dtype=self.param_dtype)


class GemmaAttention(nn.Module):
    """Multi-query / grouped-query self-attention with rotary positions and a KV cache."""

    config: GemmaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _weight(self, name, shape, axes, init, in_axes):
        w = EinsumWeight(tuple(shape), tuple(axes), init, self.param_dtype, tuple(in_axes), self.config.int8_kernels,
                         name=name)()
        return jnp.asarray(w, self.dtype)

    def _project(self, x, deterministic: bool = True):
        """x `[B, T, width]` -> queries `[B, T, heads, hd]`, keys and values `[B, T, kv_heads, hd]`
        (each plus its LoRA adapter where the config targets it)."""
        cfg = self.config
        width = x.shape[-1]
        if cfg.num_kv_heads == cfg.num_heads:
            w = self._weight("qkv_einsum", (3, cfg.num_heads, width, cfg.head_dim),
                             ("stack", "heads", "embed", "kv"), _fan_in_init(2, (0, 1, 3)), (2,))
            q, k, v = jnp.einsum("btd,snde->sbtne", x, w)
            kv_axes = ("heads", "kv")
        else:
            w_q = self._weight("q_einsum", (cfg.num_heads, width, cfg.head_dim), ("heads", "embed", "kv"),
                               _fan_in_init(1, (0, 2)), (1,))
            w_kv = self._weight("kv_einsum", (2, cfg.num_kv_heads, width, cfg.head_dim),
                                ("stack", "kv_heads", "embed", "kv"), _fan_in_init(2, (0, 1, 3)), (2,))
            q = jnp.einsum("btd,nde->btne", x, w_q)
            k, v = jnp.einsum("btd,skde->sbtke", x, w_kv)
            kv_axes = ("kv_heads", "kv")
        adapt = dict(config=lora.config_of(cfg), in_axes=("embed",), deterministic=deterministic, dtype=self.dtype,
                     param_dtype=self.param_dtype)
        q = lora.add_adapter(q, x, "q", out_axes=("heads", "kv"), **adapt)
        k = lora.add_adapter(k, x, "k", out_axes=kv_axes, **adapt)
        v = lora.add_adapter(v, x, "v", out_axes=kv_axes, **adapt)
        return q, k, v

    def _cached(self, k, v, cache_length, cache_index):
        """The keys and values to attend to, and their `layers.dot_product_attention`
        layout: this call's own (`[B, T, kv_heads, hd]`: no cache, or the prefill, which
        also writes them to a new `cache_length` cache at slots 0..), or the whole cache
        (`[B, kv_heads, hd, slots]`) after a decoding step wrote them at each example's
        slot `cache_index [B]`."""
        if cache_length is None and cache_index is None:
            return k, v, "bkhd"
        b, t, kv_heads, head_dim = k.shape
        to_cache = lambda x: jnp.transpose(x, (0, 2, 3, 1)).astype(self.dtype)  # noqa: E731
        if cache_length is not None:
            shape = (b, kv_heads, head_dim, cache_length)
            k_cache = self.variable("cache", "k_cache", jnp.zeros, shape, self.dtype)
            v_cache = self.variable("cache", "v_cache", jnp.zeros, shape, self.dtype)
            k_cache.value = jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, self.dtype), to_cache(k), 0, axis=3)
            v_cache.value = jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, self.dtype), to_cache(v), 0, axis=3)
            return k, v, "bkhd"  # the empty slots after them are masked anyway
        if t != 1:
            raise ValueError(f"A decoding step feeds one position per example, got {t}.")
        k_cache, v_cache = self.variable("cache", "k_cache"), self.variable("cache", "v_cache")
        rows = jnp.arange(b)
        k_cache.value = k_cache.value.at[rows, :, :, cache_index].set(k[:, 0].astype(self.dtype))
        v_cache.value = v_cache.value.at[rows, :, :, cache_index].set(v[:, 0].astype(self.dtype))
        return k_cache.value, v_cache.value, CACHE_LAYOUT

    @nn.compact
    def __call__(self, x, positions, attention_mask, *, cache_length: Optional[int] = None, cache_index=None,
                 deterministic: bool = True):
        """x `[B, T, width]`, positions `[B, T]`, attention_mask `[B, 1, T, S]` bool
        (True = attend; S = T without a cache, the cache length with one)."""
        cfg = self.config
        q, k, v = self._project(jnp.asarray(x, self.dtype), deterministic)
        q = rotary_embedding(q, positions, cfg.rope_max_wavelength) * jnp.asarray(cfg.head_dim**-0.5, self.dtype)
        k = rotary_embedding(k, positions, cfg.rope_max_wavelength)
        q = layers.constrain(q, ("batch", "length", "heads", "kv"))
        k, v, kv_layout = self._cached(k, v, cache_length, cache_index)
        if kv_layout == "bkhd":
            attention_mask = attention_mask[..., :k.shape[1]]
        # Each key/value head serves num_heads // num_kv_heads consecutive query heads.
        out = layers.dot_product_attention(q, k, v, mask=attention_mask, dtype=self.dtype, kv_layout=kv_layout)
        w_out = self._weight("attn_vec_einsum", (cfg.num_heads, cfg.head_dim, x.shape[-1]),
                             ("heads", "kv", "embed"), _fan_in_init((0, 1), 2), (0, 1))
        y = jnp.einsum("btnh,nhd->btd", out, w_out)
        return lora.add_adapter(y, out, "o", lora.config_of(cfg), in_axes=("heads", "kv"), out_axes=("embed",),
                                deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)


class GemmaMlp(nn.Module):
    """GeGLU: gelu(x W_gate) * (x W_up), then `linear` back to the width."""

    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    adapters: Optional[lora.LoraConfig] = None  # LoRA (palimix.models.lora)
    int8_kernels: bool = False  # palimix.models.quantize

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        width = x.shape[-1]
        store = dict(int8=self.int8_kernels, dtype=self.dtype, param_dtype=self.param_dtype)
        gating = quantize.weight("gating_einsum", _fan_in_init(1, (0, 2)), (2, width, self.mlp_dim),
                                 ("stack", "embed", "mlp"), in_axes=(1,), **store)
        linear = quantize.weight("linear", _fan_in_init(0, 1), (self.mlp_dim, width), ("mlp", "embed"), in_axes=(0,),
                                 **store)
        x = jnp.asarray(x, self.dtype)
        gate, up = jnp.einsum("btd,sdf->sbtf", x, gating)
        adapt = dict(config=self.adapters, deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = lora.add_adapter(gate, x, "wi_0", in_axes=("embed",), out_axes=("mlp",), **adapt)
        up = lora.add_adapter(up, x, "wi_1", in_axes=("embed",), out_axes=("mlp",), **adapt)
        hidden = layers.constrain(nn.gelu(gate) * up, ("batch", "length", "mlp"))
        y = jnp.einsum("btf,fd->btd", hidden, linear)
        return lora.add_adapter(y, hidden, "wo", in_axes=("mlp",), out_axes=("embed",), **adapt)


class GemmaLayer(nn.Module):
    """One pre-norm block: attention and GeGLU MLP, each added to the residual stream."""

    config: GemmaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, attention_mask, deterministic: bool = True,
                 cache_length: Optional[int] = None, cache_index=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dropout = nn.Dropout(rate=cfg.dropout_rate)
        h = GemmaRMSNorm(cfg.norm_epsilon, name="pre_attention_norm", **kw)(x)
        h = GemmaAttention(cfg, name="attn", **kw)(h, positions, attention_mask, cache_length=cache_length,
                                                    cache_index=cache_index, deterministic=deterministic)
        x = x + dropout(h, deterministic=deterministic)
        h = GemmaMlp(cfg.mlp_dim, name="mlp", adapters=lora.config_of(cfg), int8_kernels=cfg.int8_kernels, **kw)(
            GemmaRMSNorm(cfg.norm_epsilon, name="pre_ffw_norm", **kw)(x), deterministic)
        x = x + dropout(h, deterministic=deterministic)
        return layers.constrain(x, ("batch", "length", "embed"))


class Gemma(nn.Module):
    """Embedded prefix (e.g. image tokens) ++ embedded tokens -> logits of the tokens.

    The caller builds the attention mask and the positions (prefix-LM, causal, or a
    decoding step's row over the cache): this module only runs the network.
    """

    config: GemmaConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, prefix, tokens, positions, attention_mask, *, deterministic: bool = True,
                 cache_length: Optional[int] = None, cache_index=None):
        """prefix `[B, P, width]` (None: no prefix) and tokens `[B, T]` ->
        float32 logits `[B, T, vocab]` for the token positions only.

        positions `[B, P + T]`; attention_mask `[B, 1, P + T, S]` bool (True = attend).
        cache_length: also create the decoding cache with that many slots (prefill);
        cache_index `[B]`: one decoding step writing each example's slot.
        """
        cfg = self.config
        embedder = Embedder(cfg.vocab_size, cfg.width, self.dtype, self.param_dtype, cfg.int8_kernels, name="embedder")
        x = embedder.encode(tokens)
        if prefix is not None:
            x = jnp.concatenate([jnp.asarray(prefix, self.dtype), x], axis=1)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        decoding = cache_length is not None or cache_index is not None
        x = layers.apply_blocks(
            GemmaLayer, x, positions, attention_mask, deterministic, cache_length, cache_index, name="layers",
            depth=cfg.depth, scan=self.scan_layers,
            remat="none" if decoding else self.remat,  # remat saves training memory only
            static_argnums=(4, 5), config=cfg, dtype=self.dtype, param_dtype=self.param_dtype,
        )
        x = GemmaRMSNorm(cfg.norm_epsilon, self.dtype, self.param_dtype, name="final_norm")(x[:, x.shape[1] - tokens.shape[1]:])
        return embedder.decode(x)
