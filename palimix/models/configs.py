"""PaLI model configurations as code (big_vision style): named sizes plus overrides.

    cfg = configs.get("tiny")                                   # the CPU demo model
    cfg = configs.get("pali_3b", vocab_size=250112, image_size=448)
    cfg = configs.get("small", vit="B/16", text="mt5_base")     # swap either tower
    networks.count_params("pali_17b")                           # no memory allocated

Two model families (the `family` of each `MODELS` entry):

- "pali": a `PaliConfig` holds a `VitConfig` (the image tower, big_vision's variant
  table) and a `TextConfig` (the T5 1.1 / mT5 encoder-decoder, t5x's gin sizes);
- "paligemma": a `PaliGemmaConfig` holds a `VitConfig` and a `GemmaConfig` (a
  decoder-only Gemma language model reading the image tokens as a prefix).

    cfg = configs.get("paligemma_3b")                       # So400m/14 + Gemma-2B
    cfg = configs.get("tiny_decoder", llm_num_kv_heads=4)   # `llm_` like `text_`

All configs are frozen dataclasses, so they are hashable and can be attributes of
flax modules.
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
# ... plus PaliGemma's 1,024 <loc> tokens (`vocab.default_vocabulary(tokensets=("loc",))`,
# 9,216 ids): the demo's vocabulary (its detection kind), which the tiny models embed
# (the plain 8,192-id vocabulary fits them too).
PALIMIX_LOC_VOCAB_SIZE = 9216
# ... plus the <img> tokenset (1,025 image-code tokens, palimix.image_codes) after the
# <loc> one: the demo's vocabulary (10,241 ids; its text_to_image kind) rounded up, which
# the tiny models embed (the two above fit them too).
PALIMIX_DEMO_VOCAB_SIZE = 10368


# Gemma's SentencePiece (256000 pieces) + PaliGemma's 1024 <locNNNN> and 128 <segNNN> tokens.
GEMMA_VOCAB_SIZE = 257152


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


# The language model's projections LoRA can adapt (t5x's T5 names; Gemma's weights map
# onto them in palimix.models.lora): attention query/key/value/output, the gated MLP's
# two input projections and its output.
LORA_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraOptions:
    """LoRA on the language model's projections (Hu et al. 2021; `palimix.models.lora`),
    fields of either language model config (keyword-only, after the sizes). No targets:
    no adapters. mBLIP: all seven targets, rank 8, alpha 16, dropout 0.05."""

    lora_targets: tuple = ()
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def _check_lora(self) -> None:
        # gin and JSON give lists; a frozen config must stay hashable.
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown or len(set(self.lora_targets)) != len(self.lora_targets):
            raise UsageError(f"lora_targets {list(self.lora_targets)}: use distinct names among {LORA_TARGETS}.")
        if self.lora_rank < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"lora_rank must be >= 1 and lora_dropout in [0, 1), got {self.lora_rank}, "
                             f"{self.lora_dropout}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StorageOptions:
    """How the language model's frozen weights are stored (`palimix.models.quantize`):
    int8_kernels stores its projection kernels, the token embedding and the logits
    kernel as int8 with per-output-channel float32 scales (dequantized inside the
    product). Such weights cannot train: keep them out of the trainable selection."""

    int8_kernels: bool = False


@dataclasses.dataclass(frozen=True)
class TextConfig(LoraOptions, StorageOptions):
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

    def __post_init__(self):
        self._check_lora()
        if len(self.mlp_activations) == 1 and {"wi_0", "wi_1"} & set(self.lora_targets):
            raise UsageError("lora_targets wi_0/wi_1 name a gated MLP's projections; this MLP has one `wi`.")


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    """A BLIP-2 Q-Former (Li et al. 2023): learned queries, BERT-style post-LayerNorm
    layers with self-attention over the queries and cross-attention to the ViT tokens
    every `cross_attention_every` layers (layers 0, every, 2*every, ...)."""

    num_queries: int
    depth: int
    width: int
    num_heads: int
    mlp_dim: int
    cross_attention_every: int
    layer_norm_epsilon: float = 1e-12  # BERT's, as Hugging Face's Blip2QFormerConfig
    dropout_rate: float = 0.0
    # Initial weights: normal(init_std), BLIP-2's 0.02; None: fan-in scaled (LeCun normal)
    # kernels and unit-normal queries, for a Q-Former trained from scratch (palimix.models.qformer).
    init_std: float | None = 0.02


# The image-to-LM bridges: "linear" (PaLI's `img_proj`, PaliGemma's `img/head`: every
# ViT token projected) and "qformer" (mBLIP / BLIP-2: N query tokens).
BRIDGES = ("linear", "qformer")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeOptions:
    """The bridge fields every network config has (keyword-only, so they follow the
    towers). Defaults of the Q-Former: BLIP-2's (32 queries, 12 layers of width 768, 12
    heads, MLP 3072, cross-attention every 2nd layer)."""

    bridge: str = "linear"
    qformer_num_queries: int = 32
    qformer_depth: int = 12
    qformer_width: int = 768
    qformer_num_heads: int = 12
    qformer_mlp_dim: int = 3072
    qformer_cross_attention_every: int = 2
    qformer_init_std: float | None = 0.02

    @property
    def qformer(self) -> QFormerConfig:
        return QFormerConfig(self.qformer_num_queries, self.qformer_depth, self.qformer_width,
                             self.qformer_num_heads, self.qformer_mlp_dim, self.qformer_cross_attention_every,
                             init_std=self.qformer_init_std)

    def _check_bridge(self) -> None:
        if self.bridge not in BRIDGES:
            raise UsageError(f"{type(self).__name__}.bridge={self.bridge!r}: use one of {BRIDGES}.")
        if self.bridge == "qformer":
            if self.qformer_width % self.qformer_num_heads:
                raise UsageError(f"qformer_width {self.qformer_width} is not divisible by "
                                 f"qformer_num_heads {self.qformer_num_heads}.")
            if min(self.qformer_num_queries, self.qformer_depth, self.qformer_cross_attention_every) < 1:
                raise UsageError("qformer_num_queries, qformer_depth and qformer_cross_attention_every must be >= 1.")

    def bridged_image_tokens(self, vit_tokens: int) -> int:
        """How many image tokens the LM sees: the queries with a Q-Former, else the ViT's."""
        return self.qformer_num_queries if self.bridge == "qformer" else vit_tokens


@dataclasses.dataclass(frozen=True)
class PaliConfig(BridgeOptions):
    """A ViT in front of an mT5-style encoder-decoder.

    dtype: activations ("float32" or "bfloat16"); param_dtype: parameters.
    remat: per-layer rematerialisation: "none", "full" (save nothing) or "dots"
      (save matmul outputs without batch dims).
    scan_layers: run each tower's identical blocks as one `nn.scan` (t5x's and
      big_vision's `scan`): one block is traced and compiled instead of `depth` of them,
      and the blocks' parameters are stacked along a leading "layers" axis under one
      name (`encoder/layers/...`, not `encoder/layers_N/...`; see
      `palimix.models.scan_layout` to convert between the two).
    (Which parameters train is not part of the network: see `palimix.models.trainable`.)
    image_pooling: "none" (all patch tokens) or "mean" (one mean-pooled token).
    max_image_tokens: keep only the first K image tokens (after pooling).
    bridge, qformer_*: see `BridgeOptions` (pooling and max_image_tokens are for the
      linear bridge only).
    """

    vit: VitConfig
    text: TextConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    image_pooling: str = "none"
    max_image_tokens: Optional[int] = None

    def __post_init__(self):
        _check_choices(self, dict(_NETWORK_CHOICES, image_pooling=("none", "mean")))
        if self.max_image_tokens is not None and self.max_image_tokens < 1:
            raise UsageError(f"max_image_tokens must be >= 1, got {self.max_image_tokens}.")
        self._check_bridge()
        if self.bridge == "qformer" and (self.image_pooling != "none" or self.max_image_tokens):
            raise UsageError("image_pooling and max_image_tokens select linear-bridge tokens; "
                             "the Q-Former's token count is qformer_num_queries.")

    @property
    def num_image_tokens(self) -> int:
        """How many image tokens the encoder sees in front of the prompt."""
        n = 1 if self.image_pooling == "mean" else self.vit.num_patches
        n = min(n, self.max_image_tokens) if self.max_image_tokens else n
        return self.bridged_image_tokens(n)

    @property
    def vocab_size(self) -> int:
        """The size of the token embedding and of the logits (every family has one)."""
        return self.text.vocab_size


@dataclasses.dataclass(frozen=True)
class GemmaConfig(LoraOptions, StorageOptions):
    """A Gemma decoder-only language model (RMSNorm, rotary positions, GeGLU MLP,
    multi-query or grouped-query attention, embeddings tied to the logits).

    num_kv_heads: key/value heads; every group of num_heads // num_kv_heads query
      heads shares one (1: multi-query, as Gemma-2B; num_heads: plain multi-head).
    """

    vocab_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    norm_epsilon: float = 1e-6
    rope_max_wavelength: float = 10_000.0

    def __post_init__(self):
        self._check_lora()
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise UsageError(
                f"Gemma num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}: "
                "each key/value head serves a whole group of query heads."
            )
        if self.head_dim % 2:
            raise UsageError(f"Gemma head_dim must be even for rotary positions, got {self.head_dim}.")


@dataclasses.dataclass(frozen=True)
class PaliGemmaConfig(BridgeOptions):
    """A ViT whose tokens, projected to the LM width, are the fully attended prefix of a
    decoder-only Gemma (PaliGemma, Beyer et al. 2024).

    dtype, param_dtype, remat, scan_layers: as in `PaliConfig`.
    """

    vit: VitConfig
    llm: GemmaConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        _check_choices(self, _NETWORK_CHOICES)
        self._check_bridge()

    @property
    def num_image_tokens(self) -> int:
        """How many image tokens stand in front of the text (every ViT patch, or the
        Q-Former's queries)."""
        return self.bridged_image_tokens(self.vit.num_patches)

    @property
    def vocab_size(self) -> int:
        return self.llm.vocab_size


# The choices every network config offers (see PaliConfig).
_NETWORK_CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "param_dtype": ("float32", "bfloat16"),
    "remat": ("none", "full", "dots"),
    "scan_layers": (False, True),
}


def _check_choices(config, choices: dict) -> None:
    for field, allowed in choices.items():
        if getattr(config, field) not in allowed:
            raise UsageError(f"{type(config).__name__}.{field}={getattr(config, field)!r}: use one of {allowed}.")


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

# Gemma sizes (big_vision's models/ppp/gemma.py): width, depth, mlp_dim, num_heads,
# num_kv_heads, head_dim. `tiny` (grouped-query: 2 kv heads for 4 query heads) is for
# tests and the CPU demo.
GEMMA_SIZES = {
    "tiny": (64, 4, 128, 4, 2, 16),
    "gemma_2b": (2048, 18, 16384, 8, 1, 256),
    "gemma_7b": (3072, 28, 24576, 16, 16, 256),
}

# Named models: family ("pali": ViT + mT5 encoder-decoder; "paligemma": ViT + Gemma
# decoder), ViT variant (big_vision "Name/patch"), language model size (`text` for
# pali, `llm` for paligemma), vocabulary, image size.
MODELS = {
    # 64x64 images, 16 image tokens, width 64, 2 layers a side: trains in minutes on CPU.
    "tiny": dict(family="pali", vit="tiny/16", text="tiny", vocab_size=PALIMIX_DEMO_VOCAB_SIZE, image_size=64),
    "small": dict(family="pali", vit="S/16", text="mt5_small", vocab_size=PALIMIX_VOCAB_SIZE, image_size=224),
    "base": dict(family="pali", vit="B/16", text="mt5_base", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    # The PaLI paper's models (Chen et al. 2022, Table 1), at the 224px pretraining size.
    "pali_3b": dict(family="pali", vit="G/14", text="mt5_large", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    "pali_15b": dict(family="pali", vit="G/14", text="mt5_xxl", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    "pali_17b": dict(family="pali", vit="e/14", text="mt5_xxl", vocab_size=MT5_VOCAB_SIZE, image_size=224),
    # The tiny ViT in front of a 4-layer, width-64 Gemma: the decoder-only demo model.
    "tiny_decoder": dict(family="paligemma", vit="tiny/16", llm="tiny", vocab_size=PALIMIX_DEMO_VOCAB_SIZE,
                         image_size=64),
    # PaliGemma (big_vision configs/proj/paligemma): SigLIP So400m/14 at 224 px, Gemma-2B.
    "paligemma_3b": dict(family="paligemma", vit="So400m/14", llm="gemma_2b", vocab_size=GEMMA_VOCAB_SIZE,
                         image_size=224),
}

# Parameter counts the PaLI paper reports (Table 1), for `count_params` comparisons.
PAPER_PARAMS = {"pali_3b": 3.0e9, "pali_15b": 15.0e9, "pali_17b": 16.9e9}
# ... and PaliGemma's report (Beyer et al. 2024: 0.4B SigLIP + 2.5B Gemma, "about 3B").
PALIGEMMA_PARAMS = {"paligemma_3b": 2.92e9}


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


def gemma_config(size: str, *, vocab_size: int, **overrides) -> GemmaConfig:
    """A Gemma config by size name ("tiny", "gemma_2b", "gemma_7b")."""
    if size not in GEMMA_SIZES:
        raise UnknownNameError(
            f"Unknown Gemma size {size!r}; known: {', '.join(GEMMA_SIZES)}." + close_matches_hint(size, GEMMA_SIZES)
        )
    width, depth, mlp_dim, heads, kv_heads, head_dim = GEMMA_SIZES[size]
    kw = dict(vocab_size=vocab_size, width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
              num_kv_heads=kv_heads, head_dim=head_dim)
    kw.update(overrides)
    return GemmaConfig(**kw)


def _field_names(cls, *exclude) -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(cls)) - set(exclude)


@dataclasses.dataclass(frozen=True)
class Family:
    """How a model family's config is assembled: the network config class, and its
    language model (the field that holds it, its config class, a size -> config
    builder). The image tower is always `vit`."""

    config_class: type
    language_field: str
    language_class: type
    language_builder: Any

    @property
    def top_fields(self) -> frozenset:
        return _field_names(self.config_class, "vit", self.language_field)


FAMILIES = {
    "pali": Family(PaliConfig, "text", TextConfig, text_config),
    "paligemma": Family(PaliGemmaConfig, "llm", GemmaConfig, gemma_config),
}
_VIT_FIELDS = _field_names(VitConfig)


def family_of(config) -> str:
    """The family name of a network config ("pali", "paligemma")."""
    for name, family in FAMILIES.items():
        if isinstance(config, family.config_class):
            return name
    raise TypeError(f"{type(config).__name__} is not a palimix network config.")


def get(name: str, **overrides: Any):
    """The named config (a `PaliConfig` or `PaliGemmaConfig`, by the entry's family)
    with overrides.

    Overrides are field names of the network config, of its language model config
    (TextConfig for pali, GemmaConfig for paligemma) or of VitConfig; a name both towers
    have (num_heads, mlp_dim, dropout_rate, ...) needs a `vit_` prefix or the language
    model's (`text_` for pali, `llm_` for paligemma; `lm_` for either). `vit="L/16"` and `text="mt5_base"`
    (pali) or `llm="gemma_7b"` (paligemma) swap a whole tower.
    """
    if name not in MODELS:
        raise UnknownNameError(
            f"Unknown model config {name!r}; known: {', '.join(names())}." + close_matches_hint(name, MODELS)
        )
    base = dict(MODELS[name])
    family = FAMILIES[base.pop("family")]
    lang = family.language_field
    vit_variant = overrides.pop("vit", base.pop("vit"))
    lang_size = overrides.pop(lang, base.pop(lang))
    vit_kw, lang_kw, top_kw = _split_overrides(family, overrides)
    vit_kw.setdefault("image_size", base.pop("image_size"))
    lang_kw.setdefault("vocab_size", base.pop("vocab_size"))
    if "mlp_activations" in lang_kw:
        lang_kw["mlp_activations"] = tuple(lang_kw["mlp_activations"])
    return family.config_class(
        vit=vit_config(vit_variant, **vit_kw), **{lang: family.language_builder(lang_size, **lang_kw)}, **top_kw
    )


# The language model of any family (text for pali, llm for paligemma): gin files shared
# by the families bind e.g. `configs.get.lm_dropout_rate = %DROPOUT_RATE`.
LM_PREFIX = "lm_"


def _split_overrides(family: Family, overrides: dict) -> tuple[dict, dict, dict]:
    """`get`'s overrides -> (ViT fields, language model fields, network config fields)."""
    lang, lang_fields, top_fields = family.language_field, _field_names(family.language_class), family.top_fields
    vit_kw, lang_kw, top_kw = {}, {}, {}
    for key, value in overrides.items():
        if key.startswith("vit_") and key[4:] in _VIT_FIELDS:
            vit_kw[key[4:]] = value
        elif key.startswith(f"{lang}_") and key[len(lang) + 1:] in lang_fields:
            lang_kw[key[len(lang) + 1:]] = value
        elif key.startswith(LM_PREFIX) and key[len(LM_PREFIX):] in lang_fields:
            lang_kw[key[len(LM_PREFIX):]] = value
        elif key in top_fields:
            top_kw[key] = value
        elif key in _VIT_FIELDS and key in lang_fields:
            raise UsageError(f"Override {key!r} exists in both towers: write vit_{key}= or {lang}_{key}=.")
        elif key in _VIT_FIELDS:
            vit_kw[key] = value
        elif key in lang_fields:
            lang_kw[key] = value
        else:
            known = sorted(top_fields | _VIT_FIELDS | lang_fields | {"vit", lang})
            raise UsageError(f"Unknown model config override {key!r}." + close_matches_hint(key, known))
    return vit_kw, lang_kw, top_kw


def to_dict(config) -> dict:
    """Every field of `config`, and its family, as JSON-ready data (what a run records
    in run.json)."""
    return {"family": family_of(config), **dataclasses.asdict(config)}


def from_dict(data: dict):
    """The exact config `to_dict` recorded (tuples restored from JSON lists; a record
    without a family, from before there were two, is a PaLI)."""
    data = dict(data)
    family = FAMILIES[data.pop("family", "pali")]
    lang = dict(data.pop(family.language_field))
    if "mlp_activations" in lang:
        lang["mlp_activations"] = tuple(lang["mlp_activations"])
    return family.config_class(
        vit=VitConfig(**data.pop("vit")), **{family.language_field: family.language_class(**lang)}, **data
    )
