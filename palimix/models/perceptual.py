"""The perceptual loss of the VQGAN tokenizer: LPIPS (Zhang et al. 2018) on VGG16 features,
as taming-transformers trains its VQGAN (DaVinci's tokenizer).

    net = perceptual.Lpips()
    params = checkpoints.load_lpips_vgg16("vgg16.safetensors", perceptual.init_params(), lin="lpips_vgg.npz")
    distances = net.apply({"params": params}, images, reconstructions)   # [B], images in [-1, 1]

The feature network is torchvision's `vgg16().features` with its parameter names:
torchvision's `features.{N}.weight` [out, in, 3, 3] / `features.{N}.bias` are
`features_{N}/kernel` [3, 3, in, out] / `features_{N}/bias` here
(`checkpoints.load_lpips_vgg16` reads a `.safetensors` or `.npz` file with torchvision's
names; a `.pth` needs one conversion with torch, e.g.
`safetensors.torch.save_file(torchvision.models.vgg16(weights="DEFAULT").state_dict(), "vgg16.safetensors")`).

The distance is LPIPS's: the input scaled as LPIPS scales it (`(x - shift) / scale`, the
ImageNet normalization written for [-1, 1] pixels), the ReLU outputs that close VGG16's
five stages (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) normalized to unit length along
channels, their squared differences weighted per channel by the `lin{k}` heads, averaged
over positions and summed over the five layers. The heads come from LPIPS's release
(`lpips/weights/v0.1/vgg.pth`: `lin{k}.model.1.weight` [1, C, 1, 1], converted to
`.npz`/`.safetensors` with those names); without them every head is 1, LPIPS's own
`lpips=False` variant (an unweighted sum over channels).

`perceptual_loss` in `palimix.models.vqgan` takes any `(images, reconstructions) -> [B]`
distance, so another frozen feature network can stand in for this one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# VGG16's convolution stages as torchvision numbers `features`: (index of each conv,
# width). A ReLU follows every conv (index + 1) and a 2x2 max pool sits between stages;
# LPIPS reads the last ReLU of each stage.
VGG16_STAGES = (
    ((0, 2), 64),
    ((5, 7), 128),
    ((10, 12, 14), 256),
    ((17, 19, 21), 512),
    ((24, 26, 28), 512),
)
# LPIPS's ScalingLayer: ImageNet's mean/std in [-1, 1] pixels ((x + 1) / 2 - mean) / std.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10  # LPIPS's normalize_tensor


class Vgg16Features(nn.Module):
    """torchvision's `vgg16().features` up to relu5_3 -> the five LPIPS feature maps.
    `widths` replaces the stage widths (tests use narrow ones; a checkpoint needs VGG16's)."""

    widths: tuple[int, ...] = tuple(width for _, width in VGG16_STAGES)

    @nn.compact
    def __call__(self, x):
        taps = []
        for stage, ((indices, _), width) in enumerate(zip(VGG16_STAGES, self.widths)):
            if stage:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for index in indices:
                x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"features_{index}")(x))
            taps.append(x)
        return taps


def _lpips_scaling(x):
    return (x - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE)


def _unit_channels(x):
    return x / (jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True)) + _NORM_EPS)


class Lpips(nn.Module):
    """LPIPS distance between two batches of images in [-1, 1] -> [B]."""

    widths: tuple[int, ...] = tuple(width for _, width in VGG16_STAGES)

    @nn.compact
    def __call__(self, images, others):
        features = Vgg16Features(self.widths, name="vgg")
        distance = 0.0
        for k, (a, b) in enumerate(zip(features(_lpips_scaling(images)), features(_lpips_scaling(others)))):
            head = self.param(f"lin{k}", nn.initializers.ones, (a.shape[-1],))
            squared = (_unit_channels(a) - _unit_channels(b)) ** 2
            distance = distance + jnp.mean(jnp.sum(squared * head, axis=-1), axis=(1, 2))
        return distance


def init_params(widths: tuple[int, ...] | None = None, rng=None, image_size: int = 32):
    """Randomly initialised LPIPS params (heads at 1): what a checkpoint is loaded into."""
    net = Lpips(widths) if widths else Lpips()
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return net.init(rng if rng is not None else jax.random.PRNGKey(0), images, images)["params"]
