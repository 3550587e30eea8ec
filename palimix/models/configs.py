"""PaLI model configurations as code (big_vision style): named sizes plus overrides.

    cfg = configs.get("tiny")                                   # the CPU demo model
    cfg = configs.get("pali_3b", vocab_size=250112, image_size=448)
    cfg = configs.get("small", vit="B/16", text="mt5_base")     # swap either tower
    networks.count_params("pali_17b")                           # no memory allocated

A `PaliConfig` holds a `VitConfig` (the image tower, big_vision's variant table) and a
`TextConfig` (the T5 1.1 / mT5 encoder-decoder, t5x's gin sizes). All three are frozen
dataclasses, so they are hashable and can be attributes of flax modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from palimix.errors import UnknownNameError, UsageError, close_matches_hint

# mT5's SentencePiece (250000 pieces + 100 extra ids) rounded up to a multiple of 128.
MT5_VOCAB_SIZE = 250112
# palimix's own vocabulary (palimix.vocab): 8,092 SentencePiece pieces + 100 extra ids,
# already a multiple of 128. The runner and T5X both build the size a config names, and
# both refuse a vocabulary larger than it (bind `configs.get.vocab_size` for another one).
PALIMIX_VOCAB_SIZE = 8192


def round_vocab_size(size: int, multiple: int = 128) -> int:
    """Rounds a vocabulary size up (as t5x does) so the logits layer shards evenly."""
    return -(-int(size) // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class VitConfig:
    """The image tower: a big_vision ViT without head (PaLI uses all patch tokens)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 16
    image_size: int = 224
    posemb: str = "learn"  # or "sincos2d" (no parameter)
    dropout_rate: float = 0.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise UsageError(
                f"image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}: the ViT would drop the image border."
            )
        if self.width % self.num_heads:
            raise UsageError(f"ViT width {self.width} is not divisible by num_heads {self.num_heads}.")
        if self.posemb not in ("learn", "sincos2d"):
            raise UsageError(f"Unknown ViT posemb {self.posemb!r}: use 'learn' or 'sincos2d'.")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The T5 1.1 / mT5 encoder-decoder (gated-GeLU, RMSNorm, relative positions)."""

    vocab_size: int
    emb_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    num_encoder_layers: int
    num_decoder_layers: int
    dropout_rate: float = 0.0
    mlp_activations: tuple = ("gelu", "linear")
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    float32_attention_logits: bool = False


@dataclasses.dataclass(frozen=True)
class PaliConfig:
    """A ViT in front of an mT5-style encoder-decoder.

    dtype: activations ("float32" or "bfloat16"); param_dtype: parameters.
    remat: per-layer rematerialisation: "none", "full" (save nothing) or "dots"
      (save matmul outputs without batch dims).
    (Which parameters train is not part of the network: see `palimix.models.trainable`.)
    image_pooling: "none" (all patch tokens) or "mean" (one mean-pooled token).
    max_image_tokens: keep only the first K image tokens (after pooling).
    """

    vit: VitConfig
    text: TextConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    image_pooling: str = "none"
    max_image_tokens: Optional[int] = None

    def __post_init__(self):
        for field, allowed in (
            ("dtype", ("float32", "bfloat16")),
            ("param_dtype", ("float32", "bfloat16")),
            ("remat", ("none", "full", "dots")),
            ("image_pooling", ("none", "mean")),
        ):
            if getattr(self, field) not in allowed:
                raise UsageError(f"PaliConfig.{field}={getattr(self, field)!r}: use one of {allowed}.")
        if self.max_image_tokens is not None and self.max_image_tokens < 1:
            raise UsageError(f"max_image_tokens must be >= 1, got {self.max_image_tokens}.")

    @property
    def num_image_tokens(self) -> int:
        """How many image tokens the encoder sees in front of the prompt."""
        n = 1 if self.image_pooling == "mean" else self.vit.num_patches
        return min(n, self.max_image_tokens) if self.max_image_tokens else n


# big_vision's ViT variants (Table 2 of arXiv:2106.04560, plus So400m and PaLI's ViT-e)
# and palimix's `tiny` for tests and the CPU demo: width, depth, mlp_dim, num_heads.
VIT_VARIANTS = {
    "tiny": (64, 2, 128, 4),
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

# T5 1.1 / mT5 sizes as in t5x's gin files (examples/t5/mt5/*.gin):
# emb_dim, num_heads, head_dim, mlp_dim, encoder layers, decoder layers.
TEXT_SIZES = {
    "tiny": (64, 4, 16, 128, 2, 2),
    "mt5_small": (512, 6, 64, 1024, 8, 8),
    "mt5_base": (768, 12, 64, 2048, 12, 12),
    "mt5_large": (1024, 16, 64, 2816, 24, 24),
    "mt5_xl": (2048, 32, 64, 5120, 24, 24),
    "mt5_xxl": (4096, 64, 64, 10240, 24, 24),
}

# Named models: ViT variant (big_vision "Name/patch"), text size, vocabulary, image size.
MODELS = {
    # 64x64 images, 16 image tokens, width 64, 2 layers a side: trains in minutes on CPU.
    "tiny": dict(vit="tiny/16", text="tiny", vocab_size=PALIMIX_VOCAB_SIZE, image_size=64),
    "small": dict(vit="S/16", text="mt5_small", vocab_size=PALIMIX_VOCAB_SIZE, image_size=224),
    "base": dict(vit="B/16", text="mt5_base", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    # The PaLI paper's models (Chen et al. 2022, Table 1), at the 224px pretraining size.
    "pali_3b": dict(vit="G/14", text="mt5_large", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    "pali_15b": dict(vit="G/14", text="mt5_xxl", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    "pali_17b": dict(vit="e/14", text="mt5_xxl", vocab_size=MT5_VOCAB_SIZE, image_size=224),
}

# Parameter counts the PaLI paper reports (Table 1), for `count_params` comparisons.
PAPER_PARAMS = {"pali_3b": 3.0e9, "pali_15b": 15.0e9, "pali_17b": 16.9e9}


def names() -> list[str]:
    return sorted(MODELS)


def vit_config(variant: str, *, image_size: int = 224, **overrides) -> VitConfig:
    """A ViT config from a big_vision variant string like "B/16" or "So400m/14"."""
    name, _, patch = variant.partition("/")
    if name not in VIT_VARIANTS:
        raise UnknownNameError(
            f"Unknown ViT variant {name!r}; known: {', '.join(VIT_VARIANTS)}."
            + close_matches_hint(name, VIT_VARIANTS)
        )
    width, depth, mlp_dim, num_heads = VIT_VARIANTS[name]
    kw = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, image_size=image_size)
    if patch:
        kw["patch_size"] = int(patch)
    kw.update(overrides)
    return VitConfig(**kw)


def text_config(size: str, *, vocab_size: int, **overrides) -> TextConfig:
    """A T5 1.1 / mT5 config by size name ("tiny", "mt5_small", ..., "mt5_xxl")."""
    if size not in TEXT_SIZES:
        raise UnknownNameError(
            f"Unknown text size {size!r}; known: {', '.join(TEXT_SIZES)}." + close_matches_hint(size, TEXT_SIZES)
        )
    emb, heads, head_dim, mlp, enc, dec = TEXT_SIZES[size]
    kw = dict(
        vocab_size=vocab_size, emb_dim=emb, num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
        num_encoder_layers=enc, num_decoder_layers=dec,
    )
    kw.update(overrides)
    return TextConfig(**kw)


_VIT_FIELDS = {f.name for f in dataclasses.fields(VitConfig)}
_TEXT_FIELDS = {f.name for f in dataclasses.fields(TextConfig)}
_PALI_FIELDS = {f.name for f in dataclasses.fields(PaliConfig)} - {"vit", "text"}


def get(name: str, **overrides: Any) -> PaliConfig:
    """The named config with overrides.

    Overrides are field names of PaliConfig, TextConfig or VitConfig; a name both towers
    have (num_heads, mlp_dim, dropout_rate) needs a `vit_` or `text_` prefix. `vit="L/16"`
    and `text="mt5_base"` swap a whole tower.
    """
    if name not in MODELS:
        raise UnknownNameError(
            f"Unknown model config {name!r}; known: {', '.join(names())}." + close_matches_hint(name, MODELS)
        )
    base = dict(MODELS[name])
    vit_variant = overrides.pop("vit", base.pop("vit"))
    text_size = overrides.pop("text", base.pop("text"))
    vit_kw, text_kw, pali_kw = {"image_size": base.pop("image_size")}, {"vocab_size": base.pop("vocab_size")}, {}
    for key, value in overrides.items():
        if key.startswith("vit_") and key[4:] in _VIT_FIELDS:
            vit_kw[key[4:]] = value
        elif key.startswith("text_") and key[5:] in _TEXT_FIELDS:
            text_kw[key[5:]] = value
        elif key in _PALI_FIELDS:
            pali_kw[key] = value
        elif key in _VIT_FIELDS and key in _TEXT_FIELDS:
            raise UsageError(f"Override {key!r} exists in both towers: write vit_{key}= or text_{key}=.")
        elif key in _VIT_FIELDS:
            vit_kw[key] = value
        elif key in _TEXT_FIELDS:
            text_kw[key] = value
        else:
            known = sorted(_PALI_FIELDS | _VIT_FIELDS | _TEXT_FIELDS | {"vit", "text"})
            raise UsageError(f"Unknown model config override {key!r}." + close_matches_hint(key, known))
    if "mlp_activations" in text_kw:
        text_kw["mlp_activations"] = tuple(text_kw["mlp_activations"])
    return PaliConfig(
        vit=vit_config(vit_variant, **vit_kw), text=text_config(text_size, **text_kw), **pali_kw
    )


def to_dict(config: PaliConfig) -> dict:
    """Every field of `config` as JSON-ready data (what a run records in run.json)."""
    return dataclasses.asdict(config)


def from_dict(data: dict) -> PaliConfig:
    """The exact config `to_dict` recorded (tuples restored from JSON lists)."""
    data = dict(data)
    text = dict(data.pop("text"))
    text["mlp_activations"] = tuple(text["mlp_activations"])
    return PaliConfig(vit=VitConfig(**data.pop("vit")), text=TextConfig(**text), **data)
