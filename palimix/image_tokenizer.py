"""A trained image tokenizer as one object: load it from a `palimix train-tokenizer`
folder, encode pixels to code grids and decode code texts back to pixels.

    tokenizer = image_tokenizer.load("palimix_runs/tokenizer")
    grids = tokenizer.encode(images)                       # [B, h, w] int32, images in [-1, 1]
    decoded = tokenizer.decode_texts(["<img><img0012>..."])  # DecodedImages: uint8 pixels + completeness

The folder holds `tokenizer.json` (its `config`: palimix.models.vqgan.VqganConfig fields)
and `tokenizer.msgpack` (the weights, MaskGIT's layout). `palimix encode-images`, `palimix
infer --generate` and the demo's text-to-image evaluation all go through here.

A generated text need not be a whole grid: `decode_texts` keeps its first h*w codes and
fills a short one with code 0 (and draws a code beyond its codebook as 0; the count is in `DecodedImages.complete`, so callers can
report it; a metric scores the image that was drawn, as it was drawn).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from palimix import image_codes
from palimix.errors import UsageError

CONFIG_FILE, WEIGHTS_FILE = "tokenizer.json", "tokenizer.msgpack"


@dataclasses.dataclass(frozen=True)
class DecodedImages:
    pixels: np.ndarray  # [B, H, W, 3] uint8
    complete: np.ndarray  # [B] bool: the text held at least h*w codes


@dataclasses.dataclass
class ImageTokenizer:
    """A VQGAN (palimix.models.vqgan) with its parameters and compiled encode/decode."""

    model: object
    params: object

    def __post_init__(self):
        import jax

        model = self.model
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
        self._decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method=model.decode))

    @property
    def config(self):
        return self.model.config

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def encode(self, images) -> np.ndarray:
        """images [B, H, W, 3] float in [-1, 1] at the tokenizer's size -> codes [B, h, w]."""
        return np.asarray(self._encode(self.params, np.asarray(images, np.float32)))

    def decode(self, grids) -> np.ndarray:
        """codes [B, h, w] -> uint8 pixels [B, H, W, 3]."""
        images = np.asarray(self._decode(self.params, np.asarray(grids, np.int32)))
        return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)

    def grids_of_texts(self, texts: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Code texts -> (grids [B, h, w], complete [B]): the first h*w codes of each text,
        a short text filled with code 0 and a code beyond this codebook drawn as 0 (neither
        counts as complete)."""
        n = self.grid_size * self.grid_size
        grids = np.zeros((len(texts), n), np.int32)
        complete = np.zeros(len(texts), bool)
        for i, text in enumerate(texts):
            codes = np.asarray(image_codes.parse_code_text(text)[:n], np.int32)
            drawable = codes < self.config.codebook_size
            grids[i, :len(codes)] = np.where(drawable, codes, 0)
            complete[i] = len(codes) == n and bool(drawable.all())
        return grids.reshape(len(texts), self.grid_size, self.grid_size), complete

    def decode_texts(self, texts: Sequence) -> DecodedImages:
        grids, complete = self.grids_of_texts(texts)
        return DecodedImages(self.decode(grids), complete)


def load(directory: str) -> ImageTokenizer:
    """The tokenizer of a `palimix train-tokenizer` output folder."""
    import jax

    from palimix.models import checkpoints, vqgan
    from palimix.sources.base import read_json, require_path

    cfg = vqgan.VqganConfig(**read_json(os.path.join(directory, CONFIG_FILE), "tokenizer description")["config"])
    if cfg.codebook_size > image_codes.CODEBOOK_SIZE:
        raise UsageError(f"{directory}: a codebook of {cfg.codebook_size} codes; the 'img' tokenset spells at most "
                         f"{image_codes.CODEBOOK_SIZE}.")
    weights = require_path(os.path.join(directory, WEIGHTS_FILE), "tokenizer weights")
    params = checkpoints.load_vqgan(weights, vqgan.init_params(cfg, jax.random.PRNGKey(0)))
    return ImageTokenizer(vqgan.Vqgan(cfg), params)
