"""The image tokenizer: a VQGAN (VQ-VAE encoder/decoder with a codebook) in Flax.

    config = vqgan.config("tiny")                        # or "maskgit" (DaVinci's: 1024 codes, stride 16)
    model = vqgan.Vqgan(config)
    params = vqgan.init_params(config, jax.random.PRNGKey(0))
    codes = model.apply({"params": params}, images, method=model.encode)    # [B, h, w] int32
    images = model.apply({"params": params}, codes, method=model.decode)    # [B, H, W, 3]

Images are palimix's: float32 in [-1, 1] (`decode` does not clip). The network works in
MaskGIT's pixel range [0, 1] inside, so MaskGIT's tokenizer checkpoints load unchanged
(`palimix.models.checkpoints.load_vqgan`).

Parameter names and the computation are those of MaskGIT's JAX VQGAN
(`maskgit/nets/vqgan_tokenizer.py`, `VQVAE` with `quantizer="vq"`, GroupNorm, swish,
average-pool downsampling), including its quirk: in a ResBlock whose channel count
changes, the 1x1 shortcut conv is applied to the block's *output* (`x + conv(x)`), not
its input. Names: `encoder/{Conv_0, ResBlock_N/{GroupNorm_0, Conv_0, GroupNorm_1, Conv_1,
Conv_2?}, GroupNorm_0, Conv_1}`, `decoder/{Conv_0, ResBlock_N, Conv_1.. (one per upsampling),
GroupNorm_0, Conv_last}`, `quantizer/codebook [codebook_size, embedding_dim]`.

Training losses (`losses`): L2 reconstruction plus MaskGIT's quantizer loss (commitment
`commitment_cost * |sg(q) - z|^2` + codebook `|q - sg(z)|^2`), with the straight-through
estimator passing the decoder's gradient to the encoder. Optional terms (`LossTerms`, off
by default): a perceptual loss, the distance of a frozen feature network
(`palimix.models.perceptual.Lpips`: LPIPS on torchvision's VGG16, as taming-transformers
trains its VQGAN), and the generator's adversarial loss against a discriminator
(`palimix.models.discriminator`: MaskGIT's StyleGAN discriminator, trained by its own
step in `palimix train-tokenizer`). MaskGIT's entropy loss is not implemented.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from palimix.errors import UsageError


@dataclasses.dataclass(frozen=True)
class VqganConfig:
    """A VQGAN's shape (MaskGIT's `config.vqvae` fields) and loss weights."""

    codebook_size: int = 1024
    embedding_dim: int = 256
    filters: int = 128
    num_res_blocks: int = 2
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    norm_groups: int = 32  # MaskGIT: flax's GroupNorm default
    commitment_cost: float = 0.25
    image_size: int = 256

    @property
    def stride(self) -> int:
        """Pixels per code along each side: one 2x downsampling between channel stages."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.stride

    def __post_init__(self):
        object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
        if self.image_size % self.stride:
            raise UsageError(f"image_size {self.image_size} is not a multiple of the VQGAN stride {self.stride}.")
        widths = [self.filters * m for m in self.channel_multipliers]
        if any(w % self.norm_groups for w in widths):
            raise UsageError(f"VQGAN channel counts {widths} must be multiples of norm_groups {self.norm_groups}.")


CONFIGS = {
    # MaskGIT's vqgan_config.py (its ImageNet tokenizers); DaVinci's 1024 codes at stride 16.
    "maskgit": VqganConfig(),
    # Small enough to train on the demo's 64 px images on two CPU cores.
    "tiny": VqganConfig(codebook_size=64, embedding_dim=16, filters=16, num_res_blocks=1,
                        channel_multipliers=(1, 2, 2), norm_groups=8, image_size=64),
}


def config(name: str, *, stride: int | None = None, **overrides: Any) -> VqganConfig:
    """A named config with overrides. `stride` (a power of two) keeps the named config's
    channel multipliers for the first stages and repeats its last one for extra stages."""
    if name not in CONFIGS:
        raise UsageError(f"no VQGAN config {name!r}; known: {', '.join(CONFIGS)}.")
    base = CONFIGS[name]
    if stride is not None:
        overrides["channel_multipliers"] = _multipliers_for(stride, base.channel_multipliers)
    return dataclasses.replace(base, **overrides)


def _multipliers_for(stride: int, multipliers: tuple[int, ...]) -> tuple[int, ...]:
    stages = int(stride).bit_length()  # 1 -> 1 stage, 2 -> 2, 16 -> 5
    if stride < 1 or stride & (stride - 1):
        raise UsageError(f"VQGAN stride {stride} is not a power of two.")
    return tuple(multipliers[:stages]) + (multipliers[-1],) * max(0, stages - len(multipliers))


# ----------------------------------------------------------------------------------------
# The network (MaskGIT's module tree).


class ResBlock(nn.Module):
    filters: int
    norm_groups: int

    @nn.compact
    def __call__(self, x):
        input_dim = x.shape[-1]
        residual = x
        for _ in range(2):
            x = nn.GroupNorm(num_groups=self.norm_groups)(x)
            x = nn.swish(x)
            x = nn.Conv(self.filters, kernel_size=(3, 3), use_bias=False)(x)
        if input_dim != self.filters:
            # MaskGIT's shortcut reads the block's output, not its input (see the module doc).
            residual = nn.Conv(self.filters, kernel_size=(1, 1), use_bias=False)(x)
        return x + residual


def _downsample(x):
    """2x2 average pooling (MaskGIT's TF-style 'same' pooling; sizes here are even)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x):
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")


class Encoder(nn.Module):
    config: VqganConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = nn.Conv(cfg.filters, kernel_size=(3, 3), use_bias=False)(x)
        stages = len(cfg.channel_multipliers)
        for i, multiplier in enumerate(cfg.channel_multipliers):
            filters = cfg.filters * multiplier
            for _ in range(cfg.num_res_blocks):
                x = ResBlock(filters, cfg.norm_groups)(x)
            if i < stages - 1:
                x = _downsample(x)
        for _ in range(cfg.num_res_blocks):
            x = ResBlock(filters, cfg.norm_groups)(x)
        x = nn.swish(nn.GroupNorm(num_groups=cfg.norm_groups)(x))
        return nn.Conv(cfg.embedding_dim, kernel_size=(1, 1))(x)


class Decoder(nn.Module):
    config: VqganConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        filters = cfg.filters * cfg.channel_multipliers[-1]
        x = nn.Conv(filters, kernel_size=(3, 3))(x)
        for _ in range(cfg.num_res_blocks):
            x = ResBlock(filters, cfg.norm_groups)(x)
        for i in reversed(range(len(cfg.channel_multipliers))):
            filters = cfg.filters * cfg.channel_multipliers[i]
            for _ in range(cfg.num_res_blocks):
                x = ResBlock(filters, cfg.norm_groups)(x)
            if i > 0:
                x = nn.Conv(filters, kernel_size=(3, 3))(_upsample(x))
        x = nn.swish(nn.GroupNorm(num_groups=cfg.norm_groups)(x))
        return nn.Conv(3, kernel_size=(3, 3))(x)


def squared_distances(z, codebook):
    """|z - e|^2 for every vector of z [..., d] and codebook row e [K, d] -> [..., K]."""
    flat = z.reshape(-1, z.shape[-1])
    d = (jnp.sum(flat**2, axis=1, keepdims=True) - 2 * flat @ codebook.T
         + jnp.sum(codebook**2, axis=1)[None, :])
    return d.reshape(z.shape[:-1] + (codebook.shape[0],))


class VectorQuantizer(nn.Module):
    config: VqganConfig

    @nn.compact
    def __call__(self, z):
        """Nearest codes of z [..., d] -> (codes [...], straight-through quantized z, loss)."""
        codebook = self.param("codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
                              (self.config.codebook_size, z.shape[-1]))
        codes = jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)
        quantized = jnp.take(codebook, codes, axis=0)
        commitment = jnp.mean((jax.lax.stop_gradient(quantized) - z) ** 2) * self.config.commitment_cost
        codebook_loss = jnp.mean((quantized - jax.lax.stop_gradient(z)) ** 2)
        # Straight-through: the forward pass uses the codes, the gradient skips the argmin.
        straight_through = z + jax.lax.stop_gradient(quantized - z)
        return codes, straight_through, commitment + codebook_loss

    def embed(self, codes):
        return jnp.take(self.variables["params"]["codebook"], codes, axis=0)


def _to_unit(images):
    return (images + 1.0) / 2.0  # palimix's [-1, 1] -> MaskGIT's [0, 1]


def _from_unit(images):
    return images * 2.0 - 1.0


class Vqgan(nn.Module):
    """`encode(images) -> codes`, `decode(codes) -> images`; `__call__` for training."""

    config: VqganConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantizer = VectorQuantizer(self.config)

    def encode(self, images):
        """images [B, H, W, 3] in [-1, 1] -> codes [B, H/stride, W/stride] int32."""
        codes, _, _ = self.quantizer(self.encoder(_to_unit(images)))
        return codes

    def decode(self, codes):
        """codes [B, h, w] -> images [B, h*stride, w*stride, 3] (about [-1, 1], not clipped)."""
        return _from_unit(self.decoder(self.quantizer.embed(codes)))

    def __call__(self, images):
        """-> (reconstruction in [-1, 1] scale, codes, quantizer loss), gradients straight through."""
        codes, quantized, quantizer_loss = self.quantizer(self.encoder(_to_unit(images)))
        return _from_unit(self.decoder(quantized)), codes, quantizer_loss


def init_params(config: VqganConfig, rng, image_size: int | None = None):
    size = image_size or config.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return Vqgan(config).init(rng, images)["params"]


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """The optional terms of the tokenizer's loss, each a weight and the frozen function
    it scores with (built inside the train step, so the functions may close over traced
    parameters). A weight of 0 leaves its term out of the computation altogether."""

    perceptual_weight: float = 0.0
    # (images, reconstructions) -> [B] distances of a frozen network (perceptual.Lpips).
    perceptual: Callable | None = None
    adversarial_weight: float = 0.0
    # reconstructions -> the generator's adversarial loss (the discriminator as it is now,
    # not trained by this loss: discriminator.ADVERSARIAL_LOSSES' `generator` of its logits).
    critic: Callable | None = None

    def __post_init__(self):
        if self.perceptual_weight and self.perceptual is None:
            raise UsageError("a perceptual loss weight needs its frozen network (perceptual=...).")
        if self.adversarial_weight and self.critic is None:
            raise UsageError("an adversarial loss weight needs the discriminator's loss (critic=...).")


def reconstruction_loss(images, reconstructions):
    """L2 in MaskGIT's [0, 1] pixels."""
    return jnp.mean((_to_unit(reconstructions) - _to_unit(images)) ** 2)


def perceptual_loss(distance: Callable, images, reconstructions):
    """The batch mean of a frozen network's distance, e.g. `perceptual.Lpips` with its
    parameters under `stop_gradient` (as train-tokenizer builds it): the gradient reaches
    the reconstructions, never the network."""
    return jnp.mean(distance(images, reconstructions))


def losses_and_reconstruction(model: Vqgan, params, images, terms: LossTerms = LossTerms()):
    """-> (total loss, (parts, reconstructions)): L2 reconstruction + quantizer loss, plus
    the weighted perceptual and adversarial terms that `terms` switches on."""
    reconstructions, _, quantizer_loss = model.apply({"params": params}, images)
    parts = {"reconstruction_loss": reconstruction_loss(images, reconstructions), "quantizer_loss": quantizer_loss}
    total = parts["reconstruction_loss"] + quantizer_loss
    if terms.perceptual_weight:
        parts["perceptual_loss"] = perceptual_loss(terms.perceptual, images, reconstructions)
        total = total + terms.perceptual_weight * parts["perceptual_loss"]
    if terms.adversarial_weight:
        parts["generator_adversarial_loss"] = terms.critic(reconstructions)
        total = total + terms.adversarial_weight * parts["generator_adversarial_loss"]
    return total, (parts, reconstructions)


def losses(model: Vqgan, params, images, terms: LossTerms = LossTerms()) -> tuple[jnp.ndarray, dict]:
    """The training loss (see `losses_and_reconstruction`) and its parts."""
    total, (parts, _) = losses_and_reconstruction(model, params, images, terms)
    return total, parts


def psnr(images, reconstructions) -> jnp.ndarray:
    """Mean PSNR (dB) per image, on [0, 1] pixels, the reconstruction clipped to the range."""
    a = _to_unit(jnp.asarray(images, jnp.float32))
    b = jnp.clip(_to_unit(jnp.asarray(reconstructions, jnp.float32)), 0.0, 1.0)
    mse = jnp.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)))
