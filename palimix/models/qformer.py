"""The Q-Former bridge (BLIP-2, Li et al. 2023; mBLIP, Geigle et al. 2023): N learned
query tokens read the ViT's tokens through a small BERT-style transformer and are
projected to the language model's width, so the LM sees N image tokens (32) instead of
every ViT patch (256 at 224 px with patch 14/16).

The math, as Hugging Face's `Blip2QFormerModel` (query path, no text input):

    x = LayerNorm(query_tokens)                                   # qformer/layernorm
    per layer i:
      x = LayerNorm(x + dense(SelfAttention(x)))                  # attention/...
      if i % cross_attention_every == 0:
        x = LayerNorm(x + dense(CrossAttention(x, vit_tokens)))   # crossattention/...
      x = LayerNorm(x + dense(gelu(dense(x))))                    # intermediate_query, output_query
    image_tokens = language_projection(x)

(post-LayerNorm, exact erf GELU, attention scaled by 1/sqrt(head_dim), LayerNorm epsilon
1e-12.) Parameters carry Hugging Face's names with "/" for "." (so
`checkpoints.load_qformer` maps a converted BLIP-2 / mBLIP file name by name; HF's
`weight` is `kernel`, transposed, or a LayerNorm's `scale`):

    query_tokens                                                  [1, N, width]
    qformer/layernorm/{scale,bias}
    qformer/encoder/layer/{i}/attention/attention/{query,key,value}/{kernel,bias}
    qformer/encoder/layer/{i}/attention/output/{dense,LayerNorm}/...
    qformer/encoder/layer/{i}/crossattention/...                  (key/value: [vit_width, width])
    qformer/encoder/layer/{i}/intermediate_query/dense/...
    qformer/encoder/layer/{i}/output_query/{dense,LayerNorm}/...
    language_projection/{kernel,bias}                             [width, lm_width]

`QFormerBridge` holds all three top-level pieces; a network puts them at its own top
level with `nn.share_scope` (as HF's Blip2ForConditionalGeneration does).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from palimix.models import layers
from palimix.models.configs import QFormerConfig

# The bridge's top-level parameter names (the image side a text-only checkpoint lacks).
BRIDGE_PARAMS = ("query_tokens", "qformer", "language_projection")

# Logical axes: the Q-Former is image-side, so it reuses the ViT's names (and their
# sharding and Adafactor rules); its joined heads shard like the text side's.
_EMBED, _MLP, _JOINED = "vit_embed", "vit_mlp", "joined_kv"



def kernel_init(config: QFormerConfig):
    """BERT's initialisation (Blip2PreTrainedModel: normal(0.02) weights, zero biases), or
    with `init_std=None` fan-in scaled kernels. Why the option: the runner's Adafactor
    scales each update by its parameter's RMS, so 0.02-weights learn slowly, and with them
    the cross-attention's output is a tiny part of each post-LayerNorm sum: a Q-Former
    trained from scratch (the demo's) barely passed the image on (its output varied across
    images by 0.0005 of 0.15)."""
    return nn.initializers.lecun_normal() if config.init_std is None else nn.initializers.normal(config.init_std)


def query_init(config: QFormerConfig):
    return nn.initializers.normal(1.0 if config.init_std is None else config.init_std)


def _dense(features, axes, name, dtype, param_dtype, init):
    return layers.DenseGeneral(features, kernel_axes=axes, use_bias=True, bias_axes=(axes[-1],),
                               kernel_init=init, dtype=dtype, param_dtype=param_dtype, name=name)


class _Block(nn.Module):
    """Common fields of the Q-Former's modules."""

    config: QFormerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def dense(self, features, axes, name):
        return _dense(features, axes, name, self.dtype, self.param_dtype, kernel_init(self.config))

    def layer_norm(self, name):
        return layers.LayerNorm(self.config.layer_norm_epsilon, self.dtype, self.param_dtype, _EMBED, name=name)

    def dropout(self, x, deterministic):
        return nn.Dropout(rate=self.config.dropout_rate)(x, deterministic=deterministic)


class MultiHeadAttention(_Block):
    """HF's `attention`/`crossattention` `.attention`: query, key, value (2-D kernels
    [in, width], biased); keys and values from `inputs_kv`."""

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, deterministic: bool = True):
        cfg = self.config
        head_dim = cfg.width // cfg.num_heads

        def heads(x):
            return x.reshape(x.shape[:-1] + (cfg.num_heads, head_dim))

        query = heads(self.dense(cfg.width, (_EMBED, _JOINED), "query")(inputs_q))
        key = heads(self.dense(cfg.width, (_EMBED, _JOINED), "key")(inputs_kv))
        value = heads(self.dense(cfg.width, (_EMBED, _JOINED), "value")(inputs_kv))
        query = query / jnp.sqrt(head_dim).astype(query.dtype)
        dropout_rng = None if deterministic or cfg.dropout_rate == 0.0 else self.make_rng("dropout")
        out = layers.dot_product_attention(query, key, value, None, dropout_rng=dropout_rng,
                                           dropout_rate=cfg.dropout_rate, deterministic=deterministic,
                                           dtype=self.dtype)
        return out.reshape(out.shape[:-2] + (cfg.width,))


class ResidualOutput(_Block):
    """HF's `...output`: LayerNorm(residual + dense(x)) (BERT's post-norm)."""

    in_axis: str = _JOINED  # the logical axis of x: joined heads, or the MLP's

    @nn.compact
    def __call__(self, x, residual, deterministic: bool = True):
        y = self.dropout(self.dense(self.config.width, (self.in_axis, _EMBED), "dense")(x), deterministic)
        return self.layer_norm("LayerNorm")(y + residual)


class AttentionBlock(_Block):
    """HF's `attention` / `crossattention`: `attention` (the heads) + `output`."""

    @nn.compact
    def __call__(self, x, inputs_kv, deterministic: bool = True):
        h = MultiHeadAttention(self.config, self.dtype, self.param_dtype, name="attention")(x, inputs_kv, deterministic)
        return ResidualOutput(self.config, self.dtype, self.param_dtype, name="output")(h, x, deterministic)


class QFormerLayer(_Block):
    """One layer `qformer/encoder/layer/{index}`."""

    index: int = 0

    @nn.compact
    def __call__(self, x, image_tokens, deterministic: bool = True):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        x = AttentionBlock(name="attention", **kw)(x, x, deterministic)
        if self.index % self.config.cross_attention_every == 0:
            x = AttentionBlock(name="crossattention", **kw)(x, image_tokens, deterministic)
        h = layers.constrain(_Intermediate(name="intermediate_query", **kw)(x), ("batch", "length", _MLP))
        return ResidualOutput(in_axis=_MLP, name="output_query", **kw)(h, x, deterministic)


class _Intermediate(_Block):
    """HF's `intermediate_query`: dense to the MLP width, exact (erf) GELU."""

    @nn.compact
    def __call__(self, x):
        return nn.gelu(self.dense(self.config.mlp_dim, (_EMBED, _MLP), "dense")(x), approximate=False)


class _Layers(_Block):
    """HF's `encoder/layer`: the layers, named by their index."""

    @nn.compact
    def __call__(self, x, image_tokens, deterministic: bool = True):
        for i in range(self.config.depth):
            x = QFormerLayer(self.config, self.dtype, self.param_dtype, index=i, name=str(i))(
                x, image_tokens, deterministic)
        return x


class _Encoder(_Block):
    """HF's `encoder`: holds `layer`."""

    @nn.compact
    def __call__(self, x, image_tokens, deterministic: bool = True):
        return _Layers(self.config, self.dtype, self.param_dtype, name="layer")(x, image_tokens, deterministic)


class QFormer(_Block):
    """`qformer`: query embeddings `[B, N, width]` and ViT tokens `[B, P, vit_width]` ->
    query outputs `[B, N, width]`."""

    @nn.compact
    def __call__(self, queries, image_tokens, deterministic: bool = True):
        x = self.dropout(self.layer_norm("layernorm")(queries), deterministic)
        return _Encoder(self.config, self.dtype, self.param_dtype, name="encoder")(x, image_tokens, deterministic)


class QFormerBridge(nn.Module):
    """ViT tokens `[B, P, vit_width]` -> image tokens `[B, N, lm_width]`: `query_tokens`,
    `qformer`, `language_projection` (share its scope with the network's to keep HF's
    top-level names)."""

    config: QFormerConfig
    lm_width: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, vit_tokens, deterministic: bool = True):
        cfg = self.config
        queries = layers.param_with_axes("query_tokens", query_init(cfg), (1, cfg.num_queries, cfg.width), self.param_dtype,
                                         axes=("vit_posemb_batch", "vit_tokens", _EMBED))
        queries = jnp.broadcast_to(jnp.asarray(queries, self.dtype), (vit_tokens.shape[0],) + queries.shape[1:])
        x = QFormer(cfg, self.dtype, self.param_dtype, name="qformer")(queries, vit_tokens, deterministic)
        projection = _dense(self.lm_width, (_EMBED, "embed"), "language_projection", self.dtype, self.param_dtype,
                            kernel_init(cfg))
        return layers.constrain(projection(x), ("batch", "length", "embed"))
