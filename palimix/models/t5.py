"""The text tower: a T5 1.1 / mT5 encoder and decoder with t5x's parameter names.

Names and shapes match t5x's `examples/t5/network.py` checkpoints (mT5, T5 1.1):

    encoder/relpos_bias/rel_embedding [heads, 32]
    encoder/layers_N/pre_attention_layer_norm/scale
    encoder/layers_N/attention/{query,key,value}/kernel [embed, heads*head_dim], out/kernel
    encoder/layers_N/pre_mlp_layer_norm/scale, mlp/{wi_0,wi_1,wo}/kernel
    encoder/encoder_norm/scale
    decoder/relpos_bias, decoder/layers_N/{pre_self_attention_layer_norm, self_attention,
      pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale, decoder/logits_dense/kernel [embed, vocab]

Decoding cache (collection "cache", see `Decoder`): per layer the self-attention keys
and values `[B, heads, head_dim, T]`, the cross-attention keys and values over the
encoded image+prompt `[B, heads, head_dim, N]` (positions last: see `CACHE_LAYOUT`),
and one `decoder/cache_index`
position. The cache is created by a `decode=True` call on `[B, T]` decoder inputs with
the real `encoded` (that call projects the cross-attention keys/values, once per
sequence); steps then feed one token each and never re-project the image+prompt.
Scalars are named `cache_index`, so t5x's beam search (`decoding.cache_map`) leaves
them alone, and the cache may be expanded to beams after creation.

With `scan_layers` the layers are one scanned `encoder/layers/...` (`decoder/layers/...`)
whose parameters have a leading depth axis (logical axis "layers"), and the decoder's
cache is `decoder/layers/...` with the depth axis second, `[B, depth, ...]`: every cache
entry stays batch-first (`layers.SCAN_VARIABLE_AXES`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from palimix.models import layers, lora, quantize
from palimix.models.configs import TextConfig


def _activation(name):
    return (lambda x: x) if name == "linear" else getattr(nn, name)


# Cached keys/values are stored heads-first with the positions last, [B, heads, head_dim, T]
# (t5x's "swapped" cache layout): the per-step score and value contractions then read the
# cache as it lies. In the [B, T, heads, head_dim] layout XLA on CPU transposed the whole
# cache at every step, which made the step time grow with the image+prompt length.
CACHE_LAYOUT = "bhdk"


def _to_cache_layout(x, dtype):
    """[B, T, heads, head_dim] -> [B, heads, head_dim, T]."""
    return layers.constrain(jnp.transpose(x, (0, 2, 3, 1)).astype(dtype), ("batch", "heads", "kv", "length"))


# The LoRA target (palimix.models.lora) of each projection.
_LORA_TARGETS = {"query": "q", "key": "k", "value": "v", "out": "o", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}


def _projection(name, features, axes, *, init=None, adapters=None, int8=False, deterministic=True,
                dtype=jnp.float32, param_dtype=jnp.float32):
    """x -> x W (`name/kernel`, int8 with `int8`), plus its LoRA adapter when `adapters`
    targets it."""
    dense = quantize.dense_class(int8)(features, kernel_axes=axes, kernel_init=init, dtype=dtype,
                                       param_dtype=param_dtype, name=name)
    return lambda x: lora.add_adapter(dense(x), x, _LORA_TARGETS.get(name), adapters, in_axes=axes[:1],
                                      out_axes=axes[1:], deterministic=deterministic, dtype=dtype,
                                      param_dtype=param_dtype)


class Attention(nn.Module):
    """T5 multi-head attention (no 1/sqrt(d) scaling: folded into the query init)."""

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    float32_logits: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    adapters: Optional[lora.LoraConfig] = None  # LoRA (palimix.models.lora)
    int8_kernels: bool = False  # palimix.models.quantize

    def _dense(self, name, features, axes, init, deterministic):
        return _projection(name, features, axes, init=init, adapters=self.adapters, int8=self.int8_kernels,
                           deterministic=deterministic, dtype=self.dtype, param_dtype=self.param_dtype)

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, bias=None, *, deterministic: bool = True,
                 decode: bool = False, decode_position=None, cross: bool = False):
        """Attends `inputs_q [B, q, E]` to `inputs_kv [B, k, E]` with additive `bias`.

        decode: use/fill the "cache" collection. Self-attention writes this step's key
        and value at `decode_position`; cross-attention (`cross=True`) projects
        `inputs_kv` when the cache is created and reads the cached projection after.
        """
        joined = self.num_heads * self.head_dim
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(key, shape, dtype=jnp.float32):
            return init(key, shape, dtype) / jnp.sqrt(self.head_dim).astype(dtype)

        heads_axes = ("batch", "length", "heads", "kv")

        def split_heads(x):
            return layers.constrain(x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim)), heads_axes)

        query = split_heads(self._dense("query", joined, ("embed", "joined_kv"), query_init, deterministic)(inputs_q))
        key_proj = self._dense("key", joined, ("embed", "joined_kv"), init, deterministic)
        value_proj = self._dense("value", joined, ("embed", "joined_kv"), init, deterministic)

        def project_kv(x):
            return split_heads(key_proj(x)), split_heads(value_proj(x))

        cache_ready = decode and self.has_variable("cache", "cached_key")
        kv_layout = "bkhd"
        if not decode:
            key, value = project_kv(inputs_kv)
        elif cross:
            # The encoded image+prompt is projected once, when the cache is created (from
            # the real encodings: decoding.init_cache), and read at every step after.
            shape = (inputs_kv.shape[0], self.num_heads, self.head_dim, inputs_kv.shape[1])
            cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
            if cache_ready:
                key, value, kv_layout = cached_key.value, cached_value.value, CACHE_LAYOUT
            else:
                key, value = project_kv(inputs_kv)
                cached_key.value, cached_value.value = _to_cache_layout(key, self.dtype), _to_cache_layout(value, self.dtype)
        else:
            key, value = project_kv(inputs_kv)
            shape = (key.shape[0], self.num_heads, self.head_dim, key.shape[1])  # T positions at cache creation
            cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
            if cache_ready:
                if query.shape[1] != 1:
                    raise ValueError(f"Cached decoding feeds one position at a time, got {query.shape[1]}.")
                key = jax.lax.dynamic_update_slice_in_dim(
                    cached_key.value, _to_cache_layout(key, self.dtype), decode_position, axis=3)
                value = jax.lax.dynamic_update_slice_in_dim(
                    cached_value.value, _to_cache_layout(value, self.dtype), decode_position, axis=3)
                cached_key.value, cached_value.value, kv_layout = key, value, CACHE_LAYOUT

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        x = layers.dot_product_attention(
            query, key, value, bias, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
            deterministic=deterministic, dtype=self.dtype, float32_logits=self.float32_logits, kv_layout=kv_layout,
        )
        x = x.reshape(x.shape[:-2] + (joined,))
        return self._dense("out", inputs_q.shape[-1], ("joined_kv", "embed"), init, deterministic)(x)


class Mlp(nn.Module):
    """Gated feed-forward block (`wi_0`, `wi_1`, `wo`; `wi` for a single activation)."""

    mlp_dim: int
    activations: tuple = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    adapters: Optional[lora.LoraConfig] = None  # LoRA (palimix.models.lora)
    int8_kernels: bool = False  # palimix.models.quantize

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        dense = dict(adapters=self.adapters, int8=self.int8_kernels, deterministic=deterministic, dtype=self.dtype,
                     param_dtype=self.param_dtype)
        hidden = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = _activation(act)(_projection(name, self.mlp_dim, ("embed", "mlp"), **dense)(x))
            hidden = h if hidden is None else hidden * h
        hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic=deterministic)
        hidden = layers.constrain(hidden, ("batch", "length", "mlp"))
        return _projection("wo", x.shape[-1], ("mlp", "embed"), **dense)(hidden)


class _Sublayers:
    """Shared construction helpers for encoder and decoder layers."""

    def norm(self, name):
        return layers.RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def attention(self, name):
        cfg = self.config
        return Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.float32_attention_logits,
                         self.dtype, self.param_dtype, lora.config_of(cfg), cfg.int8_kernels, name=name)

    def mlp(self, name):
        cfg = self.config
        return Mlp(cfg.mlp_dim, tuple(cfg.mlp_activations), cfg.dropout_rate, self.dtype, self.param_dtype,
                   lora.config_of(cfg), cfg.int8_kernels, name=name)

    def dropout(self, x, deterministic):
        return nn.Dropout(rate=self.config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class EncoderLayer(nn.Module, _Sublayers):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias, deterministic: bool = True):
        h = self.norm("pre_attention_layer_norm")(x)
        y = self.attention("attention")(h, h, bias, deterministic=deterministic)
        x = x + self.dropout(y, deterministic)
        y = self.mlp("mlp")(self.norm("pre_mlp_layer_norm")(x), deterministic)
        x = x + self.dropout(y, deterministic)
        return layers.constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module, _Sublayers):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, encoded, self_bias, cross_bias, deterministic: bool = True, decode: bool = False,
                 decode_position=None):
        h = self.norm("pre_self_attention_layer_norm")(x)
        y = self.attention("self_attention")(h, h, self_bias, deterministic=deterministic, decode=decode,
                                             decode_position=decode_position)
        x = x + self.dropout(y, deterministic)
        h = self.norm("pre_cross_attention_layer_norm")(x)
        y = self.attention("encoder_decoder_attention")(h, encoded, cross_bias, deterministic=deterministic,
                                                        decode=decode, decode_position=decode_position, cross=True)
        x = x + self.dropout(y, deterministic)
        y = self.mlp("mlp")(self.norm("pre_mlp_layer_norm")(x), deterministic)
        x = x + self.dropout(y, deterministic)
        return layers.constrain(x, ("batch", "length", "embed"))


def _relpos(cfg: TextConfig, dtype, param_dtype):
    return layers.RelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, dtype,
                                       param_dtype, name="relpos_bias")


class Encoder(nn.Module):
    """Embedded inputs `[B, N, E]` + key mask `[B, N]` -> encoded `[B, N, E]`."""

    config: TextConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, key_mask, deterministic: bool = True):
        cfg = self.config
        length = x.shape[1]
        bias = _relpos(cfg, self.dtype, self.param_dtype)(length, length, bidirectional=True)
        bias = bias + layers.mask_to_bias(key_mask[:, None, None, :], self.dtype)
        x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = layers.constrain(x.astype(self.dtype), ("batch", "length", "embed"))
        x = layers.apply_blocks(
            EncoderLayer, x, bias, deterministic, name="layers", depth=cfg.num_encoder_layers,
            scan=self.scan_layers, remat=self.remat, static_argnums=(3,), config=cfg, dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = layers.RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)
        return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder tokens (embedded) attending to `encoded` -> logits `[B, T, vocab]` (float32)."""

    config: TextConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, y, encoded, encoder_key_mask, decoder_target_tokens=None, *, deterministic: bool = True,
                 decode: bool = False, max_decode_length: Optional[int] = None):
        """y: embedded decoder inputs `[B, T, E]`; encoder_key_mask `[B, N]` (True = attend).

        decode=True: cached autoregressive decoding, one position per call (after the
        cache was created by a first call on `[B, max_decode_length]` inputs).
        """
        cfg = self.config
        relpos = _relpos(cfg, self.dtype, self.param_dtype)
        cross_bias = layers.mask_to_bias(encoder_key_mask[:, None, None, :], self.dtype)
        position = None
        if decode:
            cache_ready = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if cache_ready:
                position = index.value
                length = max_decode_length or self._cache_length()
                self_bias = relpos(1, length, bidirectional=False, query_position=position)
                # Causality: this position sees the cached ones and itself.
                self_bias = self_bias + layers.mask_to_bias((jnp.arange(length) <= position)[None, None, None], self.dtype)
                index.value = position + 1
            else:  # creating the cache: a full causal pass over dummy inputs
                self_bias = self._training_bias(relpos, y.shape[1], None)
        else:
            self_bias = self._training_bias(relpos, y.shape[1], decoder_target_tokens)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        y = layers.constrain(y.astype(self.dtype), ("batch", "length", "embed"))
        y = layers.apply_blocks(
            DecoderLayer, y, encoded, self_bias, cross_bias, deterministic, decode, position, name="layers",
            depth=cfg.num_decoder_layers, scan=self.scan_layers, remat="none" if decode else self.remat,
            static_argnums=(5, 6), config=cfg, dtype=self.dtype, param_dtype=self.param_dtype,
        )
        y = layers.RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="decoder_norm")(y)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        logits = quantize.dense_class(cfg.int8_kernels)(cfg.vocab_size, kernel_axes=("embed", "vocab"),
                                                         dtype=jnp.float32, param_dtype=self.param_dtype,
                                                         name="logits_dense")(y)
        return layers.constrain(logits, ("batch", "length", "vocab"))

    def _cache_length(self) -> int:
        first_layer = "layers" if self.scan_layers else "layers_0"  # scanned: every layer's, batch first
        return self.get_variable("cache", first_layer)["self_attention"]["cached_key"].shape[-1]

    def _training_bias(self, relpos, length, decoder_target_tokens):
        """Relative positions + causal mask (+ target padding as keys when given)."""
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if decoder_target_tokens is not None:
            causal = causal & (decoder_target_tokens > 0)[:, None, None, :]
        return relpos(length, length, bidirectional=False) + layers.mask_to_bias(causal, self.dtype)

