"""The image tower: a ViT with big_vision's parameter names (no head, no pooling).

Parameters (as in big_vision `models/vit.py` and its `.npz` checkpoints):

    embedding/{kernel [p, p, 3, width], bias}                 patch embedding
    pos_embedding [1, patches, width]                          learned ("learn")
    Transformer/encoderblock_N/LayerNorm_0, LayerNorm_1        pre-norms
    Transformer/encoderblock_N/MultiHeadDotProductAttention_0/{query,key,value,out}
    Transformer/encoderblock_N/MlpBlock_0/{Dense_0, Dense_1}
    Transformer/encoder_norm

With `scan_layers` the blocks are one scanned `Transformer/encoderblock/...` whose
parameters have a leading depth axis (big_vision's `scan=True` layout).

Logical axes: vit_embed, vit_mlp, vit_heads, vit_kv, vit_patch_height, vit_patch_width,
vit_channels, vit_tokens, vit_posemb_batch (partitioning.DEFAULT_RULES maps them).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from palimix.models import layers
from palimix.models.configs import VitConfig

_xavier = nn.initializers.xavier_uniform()


def _xavier_multi(in_axis, out_axis):
    return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding `[1, h*w, width]` (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"sincos2d position embedding needs width % 4 == 0, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)


class VitAttention(nn.Module):
    """big_vision's MultiHeadDotProductAttention_0: biased q/k/v/out, 1/sqrt(d) scaling."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        head_dim = width // self.num_heads

        def project(name):
            return layers.DenseGeneral(
                (self.num_heads, head_dim), kernel_axes=("vit_embed", "vit_heads", "vit_kv"),
                use_bias=True, bias_axes=("vit_heads", "vit_kv"), kernel_init=_xavier_multi(0, (1, 2)),
                dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            )(x)

        query = project("query") / jnp.sqrt(head_dim).astype(self.dtype)
        key, value = project("key"), project("value")
        axes = ("batch", "vit_tokens", "vit_heads", "vit_kv")
        query, key, value = (layers.constrain(t, axes) for t in (query, key, value))
        out = layers.dot_product_attention(query, key, value, None, dtype=self.dtype)
        return layers.DenseGeneral(
            width, axis=(-2, -1), kernel_axes=("vit_heads", "vit_kv", "vit_embed"), use_bias=True,
            bias_axes=("vit_embed",), kernel_init=_xavier_multi((0, 1), 2), dtype=self.dtype,
            param_dtype=self.param_dtype, name="out",
        )(out)


class VitMlp(nn.Module):
    """big_vision's MlpBlock_0: Dense_0 -> GeLU -> Dense_1."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        width = x.shape[-1]
        dense = dict(use_bias=True, kernel_init=_xavier, bias_init=nn.initializers.normal(stddev=1e-6),
                     dtype=self.dtype, param_dtype=self.param_dtype)
        h = layers.DenseGeneral(self.mlp_dim, kernel_axes=("vit_embed", "vit_mlp"), bias_axes=("vit_mlp",),
                                name="Dense_0", **dense)(x)
        h = layers.constrain(nn.gelu(h), ("batch", "vit_tokens", "vit_mlp"))
        h = nn.Dropout(rate=self.dropout_rate)(h, deterministic=deterministic)
        return layers.DenseGeneral(width, kernel_axes=("vit_mlp", "vit_embed"), bias_axes=("vit_embed",),
                                   name="Dense_1", **dense)(h)


class VitBlock(nn.Module):
    """One pre-norm encoder block (encoderblock_N)."""

    config: VitConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.config
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.constrain(x, ("batch", "vit_tokens", "vit_embed"))
        y = layers.LayerNorm(name="LayerNorm_0", **norm)(x)
        y = VitAttention(cfg.num_heads, name="MultiHeadDotProductAttention_0", **norm)(y)
        y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)
        x = x + y
        y = layers.LayerNorm(name="LayerNorm_1", **norm)(x)
        y = VitMlp(cfg.mlp_dim, cfg.dropout_rate, name="MlpBlock_0", **norm)(y, deterministic)
        y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=deterministic)
        return layers.constrain(x + y, ("batch", "vit_tokens", "vit_embed"))


class VitEncoder(nn.Module):
    """`Transformer`: the blocks and the final `encoder_norm`."""

    config: VitConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = layers.apply_blocks(
            VitBlock, x, deterministic, name="encoderblock", depth=self.config.depth, scan=self.scan_layers,
            remat=self.remat, static_argnums=(2,), config=self.config, dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        return layers.LayerNorm(name="encoder_norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class VisionTransformer(nn.Module):
    """Images `[B, S, S, 3]` in [-1, 1] -> patch tokens `[B, (S/p)^2, width]`."""

    config: VitConfig
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        cfg = self.config
        b, h, w, c = images.shape
        if h != cfg.image_size or w != cfg.image_size:
            raise ValueError(
                f"The ViT expects {cfg.image_size}x{cfg.image_size} images, got {h}x{w}: "
                "set image_size in the model config (position embeddings are resampled on load)."
            )
        p = cfg.patch_size
        # A stride-p VALID convolution, written as a matmul over patches: same kernel
        # layout [p, p, 3, width] as big_vision's nn.Conv `embedding`.
        patches = jnp.asarray(images, self.dtype).reshape(b, h // p, p, w // p, p, c)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p, p, c)
        x = layers.DenseGeneral(
            cfg.width, axis=(-3, -2, -1), kernel_axes=("vit_patch_height", "vit_patch_width", "vit_channels", "vit_embed"),
            use_bias=True, bias_axes=("vit_embed",), kernel_init=nn.initializers.lecun_normal((0, 1, 2), 3),
            dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
        )(patches)
        if cfg.posemb == "learn":
            posemb = layers.param_with_axes(
                "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(cfg.width)),
                (1, cfg.num_patches, cfg.width), self.param_dtype, axes=("vit_posemb_batch", "vit_tokens", "vit_embed"),
            )
        else:
            posemb = posemb_sincos_2d(cfg.grid_size, cfg.grid_size, cfg.width)
        x = x + jnp.asarray(posemb, self.dtype)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=not train)
        return VitEncoder(cfg, self.remat, self.dtype, self.param_dtype, self.scan_layers, name="Transformer")(
            x, not train)
