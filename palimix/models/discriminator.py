"""The VQGAN tokenizer's adversarial loss: MaskGIT's StyleGAN discriminator in Flax and
the GAN losses.

    config = discriminator.config("tiny")                   # or "maskgit"
    net = discriminator.Discriminator(config)
    params = discriminator.init_params(config, rng, image_size=64)
    logits = net.apply({"params": params}, images)         # [B, 1], images in [-1, 1]
    loss = discriminator.ADVERSARIAL_LOSSES["non_saturating"]

The network and its parameter names are MaskGIT's (`maskgit/nets/discriminator.py`, the
StyleGAN2 discriminator): `Conv_0` (3x3) -> one `ResBlock_N` per halving down to 4x4
(`Conv_0` 3x3, blur-pool [1, 3, 3, 1] downsampling of both paths, `Conv_1` the 1x1
shortcut, `Conv_2` 3x3, `(x + shortcut) / sqrt(2)`) -> `Conv_1` (3x3) -> `Dense_0` ->
`Dense_1` (one logit), leaky ReLU 0.2 everywhere, Xavier-uniform kernels, no
normalization (so no batch statistics between the real and the generated batch). Widths
follow MaskGIT's table by resolution, `min(max_filters, filters_at_256 * 256 / resolution)`
(MaskGIT's: 64 at 256 px, at most 512). palimix feeds it images in its own [-1, 1] range.

Losses (`ADVERSARIAL_LOSSES`), from logits of real and reconstructed images:
`non_saturating` (MaskGIT's `loss_type`: discriminator `softplus(-real) + softplus(fake)`,
generator `softplus(-fake)`) and `hinge` (taming-transformers': discriminator
`(relu(1 - real) + relu(1 + fake)) / 2`, generator `-fake`), each a batch mean. Optional
for the discriminator: MaskGIT's R1 gradient penalty on real images (`r1_penalty`; its
weight in MaskGIT's config: 10).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from palimix.errors import UsageError


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    filters_at_256: int = 64  # MaskGIT's 64 * config.discriminator.channel_multiplier
    max_filters: int = 512
    blur_resample: bool = True  # MaskGIT's default; else 2x2 average pooling

    def width(self, resolution: int) -> int:
        return max(1, min(self.max_filters, self.filters_at_256 * 256 // resolution))


CONFIGS = {
    "maskgit": DiscriminatorConfig(),
    # Next to the tiny VQGAN: 16 channels at 64 px, at most 32 (92k parameters at 64 px).
    "tiny": DiscriminatorConfig(filters_at_256=4, max_filters=32),
}


def config(name: str) -> DiscriminatorConfig:
    if name not in CONFIGS:
        raise UsageError(f"no discriminator config {name!r}; known: {', '.join(CONFIGS)}.")
    return CONFIGS[name]


def _leaky_relu(x):
    return jax.nn.leaky_relu(x, negative_slope=0.2)


_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)  # StyleGAN's low-pass filter (MaskGIT's BlurPool2D, filter_size 4)


def _blur_axis(x, axis: int):
    """The [1, 3, 3, 1] / 8 filter along one axis at stride 2, zero padding one each side
    (TensorFlow's SAME for 4 taps at stride 2 on an even size)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    x = jnp.pad(x, pad)
    out_size = (x.shape[axis] - 4) // 2 + 1
    taps = [jax.lax.slice_in_dim(x, t, t + 2 * (out_size - 1) + 1, stride=2, axis=axis) for t in range(4)]
    return sum(w * tap for w, tap in zip(_BLUR_TAPS, taps)) / sum(_BLUR_TAPS)


def blur_pool(x):
    """StyleGAN's blur-pool downsampling of [B, H, W, C] (H, W even): the separable
    [1, 3, 3, 1] filter, per channel, at stride 2. Written as strided slices: XLA's
    depthwise convolution is several times slower on CPU."""
    return _blur_axis(_blur_axis(x, 1), 2)


def _average_pool(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


_KERNEL_INIT = nn.initializers.xavier_uniform()


class ResBlock(nn.Module):
    filters: int
    blur_resample: bool

    @nn.compact
    def __call__(self, x):
        downsample = blur_pool if self.blur_resample else _average_pool
        residual = x
        x = _leaky_relu(nn.Conv(x.shape[-1], (3, 3), kernel_init=_KERNEL_INIT)(x))
        x, residual = downsample(x), downsample(residual)
        residual = nn.Conv(self.filters, (1, 1), use_bias=False, kernel_init=_KERNEL_INIT)(residual)
        x = _leaky_relu(nn.Conv(self.filters, (3, 3), kernel_init=_KERNEL_INIT)(x))
        return (residual + x) / math.sqrt(2)


class Discriminator(nn.Module):
    """images [B, S, S, 3] (S a power of two, at least 8) -> logits [B, 1]."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, x):
        cfg, size = self.config, x.shape[1]
        if x.shape[1] != x.shape[2] or size < 8 or size & (size - 1):
            raise UsageError(f"the discriminator needs square images whose side is a power of two >= 8, "
                             f"not {x.shape[1]}x{x.shape[2]}.")
        x = _leaky_relu(nn.Conv(cfg.width(size), (3, 3), kernel_init=_KERNEL_INIT)(x))
        while size > 4:
            size //= 2
            x = ResBlock(cfg.width(size), cfg.blur_resample)(x)
        x = _leaky_relu(nn.Conv(cfg.width(4), (3, 3), kernel_init=_KERNEL_INIT)(x))
        x = _leaky_relu(nn.Dense(cfg.width(4), kernel_init=_KERNEL_INIT)(x.reshape(x.shape[0], -1)))
        return nn.Dense(1, kernel_init=_KERNEL_INIT)(x)


def init_params(cfg: DiscriminatorConfig, rng, image_size: int):
    return Discriminator(cfg).init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32))["params"]


# ----------------------------------------------------------------------------------------
# GAN losses.


@dataclasses.dataclass(frozen=True)
class AdversarialLoss:
    discriminator: Callable  # (logits of real, logits of generated) -> scalar
    generator: Callable  # logits of generated -> scalar


ADVERSARIAL_LOSSES = {
    "non_saturating": AdversarialLoss(
        discriminator=lambda real, fake: jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)),
        generator=lambda fake: jnp.mean(jax.nn.softplus(-fake))),
    "hinge": AdversarialLoss(
        discriminator=lambda real, fake: 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))),
        generator=lambda fake: -jnp.mean(fake)),
}


def adversarial_loss(name: str) -> AdversarialLoss:
    if name not in ADVERSARIAL_LOSSES:
        raise UsageError(f"no adversarial loss {name!r}; known: {', '.join(ADVERSARIAL_LOSSES)}.")
    return ADVERSARIAL_LOSSES[name]


def r1_penalty(net: Discriminator, params, images):
    """R1 (Mescheder et al. 2018; MaskGIT's `r1_gradient_penalty`): the squared norm of the
    gradient of each real image's logit with respect to its pixels, batch mean."""
    grads = jax.grad(lambda x: jnp.sum(net.apply({"params": params}, x)))(images)
    return jnp.mean(jnp.sum(grads.reshape(images.shape[0], -1) ** 2, axis=-1))


def discriminator_loss(net: Discriminator, params, images, reconstructions, loss: AdversarialLoss,
                       r1_weight: float = 0.0):
    """The discriminator's loss on real images against (fixed) reconstructions, plus
    `r1_weight` times the R1 penalty on the real ones -> (total, parts)."""
    logits = net.apply({"params": params}, jnp.concatenate([images, jax.lax.stop_gradient(reconstructions)]))
    real, fake = jnp.split(logits, 2)
    parts = {"discriminator_loss": loss.discriminator(real, fake)}
    total = parts["discriminator_loss"]
    if r1_weight:
        parts["r1_penalty"] = r1_penalty(net, params, images)
        total = total + r1_weight * parts["r1_penalty"]
    return total, parts
