"""LoRA (Hu et al. 2021) on the language model's projections, one implementation for
the mT5 encoder-decoder (`t5.py`, 2-D `DenseGeneral` kernels) and for Gemma
(`gemma.py`, einsum weights): a frozen projection `W` gets a trainable low-rank update,

    y = x W + (alpha / rank) * dropout(x) A B        A [in..., rank], B [rank, out...]

with B zero-initialised, so training starts from the frozen model. Targets (the LM
config's `lora_targets`, `configs.LORA_TARGETS`): q, k, v, o, wi_0, wi_1, wo.

The adapter of target t is a module `lora_{t}` (parameters `a`, `b`) beside the weight it
adapts, in the module that owns it: `encoder/layers_0/attention/lora_q/{a,b}` next to
`attention/query/kernel`; `llm/layers_0/attn/lora_k/{a,b}` next to `attn/kv_einsum/w`
(whose first stacked entry is k); `llm/layers_0/mlp/lora_wo` next to `mlp/linear`.
`merge(params, scale)` folds every adapter into its weight (`MERGE_SITES` says where and
how) and drops it: the merged network, built with `without_lora(config)`, computes the
same logits (`palimix export --merge_lora`). Base weights are frozen by the
trainable-parameter selection (`MBLIP_TRAINABLE`; gin: models/mblip_lora.gin).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from palimix.errors import UsageError
from palimix.models import configs, layers

# Every adapter parameter: `.../lora_<target>/a` and `.../b` (trainable.ParamSelection
# patterns are full matches).
TRAINABLE_PATTERN = r"(.*/)?lora_[a-z0-9_]+/[ab]"
# mBLIP's trainable parameters: the adapters and the Q-Former bridge (gin:
# models/mblip_lora.gin binds trainable.ParamSelection.trainable to these).
MBLIP_TRAINABLE = (TRAINABLE_PATTERN, "query_tokens", "qformer/.*", "language_projection/.*")

# Where each target's adapter merges, by the weights its owning module may hold: (weight
# path within that module, index along the weight's leading stacking axis or None, the
# einsum from (a, b) to the weight's layout). a's letters are its input dims then r, b's
# r then its output dims. T5's kernels are [in, out]; Gemma's are big_vision's einsum
# weights (q_einsum [heads, width, head_dim], kv_einsum [2, kv_heads, width, head_dim],
# qkv_einsum [3, ...], attn_vec_einsum [heads, head_dim, width], gating_einsum [2, width,
# mlp], linear [mlp, width]).
MERGE_SITES = {
    "q": (("query/kernel", None, "ir,ro->io"), ("q_einsum/w", None, "dr,rne->nde"),
          ("qkv_einsum/w", 0, "dr,rne->nde")),
    "k": (("key/kernel", None, "ir,ro->io"), ("kv_einsum/w", 0, "dr,rke->kde"),
          ("qkv_einsum/w", 1, "dr,rke->kde")),
    "v": (("value/kernel", None, "ir,ro->io"), ("kv_einsum/w", 1, "dr,rke->kde"),
          ("qkv_einsum/w", 2, "dr,rke->kde")),
    "o": (("out/kernel", None, "ir,ro->io"), ("attn_vec_einsum/w", None, "nhr,rd->nhd")),
    "wi_0": (("wi_0/kernel", None, "ir,ro->io"), ("gating_einsum", 0, "dr,rf->df")),
    "wi_1": (("wi_1/kernel", None, "ir,ro->io"), ("gating_einsum", 1, "dr,rf->df")),
    "wo": (("wo/kernel", None, "ir,ro->io"), ("linear", None, "fr,rd->fd")),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    targets: tuple
    rank: int
    alpha: float
    dropout: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def config_of(lm_config) -> Optional[LoraConfig]:
    """The LoRA settings of a language model config (TextConfig, GemmaConfig); None
    without targets."""
    if not lm_config.lora_targets:
        return None
    return LoraConfig(tuple(lm_config.lora_targets), lm_config.lora_rank, lm_config.lora_alpha,
                      lm_config.lora_dropout)


class Adapter(nn.Module):
    """`x [..., in...]` -> `scale * dropout(x) A B` `[..., out...]`; A contracts the last
    `len(in_axes)` dims of x."""

    in_axes: tuple
    out_shape: tuple
    out_axes: tuple
    config: LoraConfig
    deterministic: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, n_in = self.config, len(self.in_axes)
        in_shape = x.shape[x.ndim - n_in:]
        # A as nn.Dense's default (LeCun normal over the inputs), B zero: no change at start.
        init_a = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)), out_axis=n_in)
        a = layers.param_with_axes("a", init_a, in_shape + (cfg.rank,), self.param_dtype,
                                   axes=tuple(self.in_axes) + ("lora_rank",))
        b = layers.param_with_axes("b", nn.initializers.zeros, (cfg.rank,) + tuple(self.out_shape),
                                   self.param_dtype, axes=("lora_rank",) + tuple(self.out_axes))
        x = nn.Dropout(rate=cfg.dropout)(jnp.asarray(x, self.dtype), deterministic=self.deterministic)
        h = jnp.tensordot(x, jnp.asarray(a, self.dtype), n_in)
        return jnp.tensordot(h, jnp.asarray(b, self.dtype) * jnp.asarray(cfg.scale, self.dtype), 1)


def add_adapter(y, x, target: str, config: Optional[LoraConfig], *, in_axes: tuple, out_axes: tuple,
                deterministic: bool, dtype=jnp.float32, param_dtype=jnp.float32):
    """`y` (the frozen projection of `x`) plus the adapter of `target` when the config
    adapts it. Call inside the compact method of the module that owns the projection:
    the adapter becomes its child `lora_{target}`."""
    if config is None or target not in config.targets:
        return y
    out_shape = y.shape[y.ndim - len(out_axes):]
    delta = Adapter(tuple(in_axes), tuple(out_shape), tuple(out_axes), config, deterministic, dtype, param_dtype,
                    name=f"lora_{target}")(x)
    return y + delta.astype(y.dtype)


# --- merging --------------------------------------------------------------------------

def merge(params, scale: float):
    """`params` with every adapter folded into its weight (W += scale * A B, in float32,
    back in W's dtype) and the adapters removed. scale: alpha / rank of the run."""
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(_plain(params)).items()}
    adapters = sorted({name.rsplit("/", 1)[0] for name in flat if _is_adapter_param(name)})
    if not adapters:
        raise UsageError("the parameters hold no LoRA adapters (.../lora_<target>/a, b) to merge.")
    for adapter in adapters:
        owner, _, module = adapter.rpartition("/")
        target = module[len("lora_"):]
        weight, stack, equation = _merge_site(flat, owner, target)
        if np.asarray(flat[weight]).dtype == np.int8:
            raise UsageError(f"{weight} is stored in int8: merge the adapters into the float weights "
                             "(a run without int8_kernels), then quantize (quantize.quantize_params).")
        a, b = (np.asarray(flat.pop(f"{adapter}/{p}"), np.float32) for p in ("a", "b"))
        merged = np.array(flat[weight], np.float32)
        merged[_site_index(equation, a, stack)] += scale * np.einsum(_stacked(equation), a, b)
        flat[weight] = merged.astype(np.asarray(flat[weight]).dtype)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _stacked(equation: str) -> str:
    """The merge einsum over any leading layer axes (scanned layers stack adapters and
    weights alike on a leading depth axis)."""
    (a, b), out = equation.split("->")[0].split(","), equation.split("->")[1]
    return f"...{a},...{b}->...{out}"


def _site_index(equation: str, a, stack):
    """Where the delta lands in the weight: all of it, or one slice of a fused weight
    (`stack`), after any leading layer axes of a scanned network."""
    if stack is None:
        return Ellipsis
    layer_axes = a.ndim - len(equation.split(",")[0])
    return (slice(None),) * layer_axes + (stack,)


def _is_adapter_param(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 2 and parts[-2].startswith("lora_") and parts[-1] in ("a", "b")


def _merge_site(flat: dict, owner: str, target: str) -> tuple:
    prefix = f"{owner}/" if owner else ""
    if target not in MERGE_SITES:
        raise UsageError(f"{prefix}lora_{target}: no LoRA target {target!r} (targets: {configs.LORA_TARGETS}).")
    found = [(f"{prefix}{w}", stack, eq) for w, stack, eq in MERGE_SITES[target] if f"{prefix}{w}" in flat]
    if len(found) != 1:
        candidates = [w for w, _, _ in MERGE_SITES[target]]
        raise UsageError(f"{prefix}lora_{target}: expected exactly one of {candidates} beside it, found "
                         f"{[w for w, _, _ in found]}.")
    return found[0]


def without_lora(config):
    """The network config with the language model's adapters off (a merged checkpoint's)."""
    lang = configs.FAMILIES[configs.family_of(config)].language_field
    return dataclasses.replace(config, **{lang: dataclasses.replace(getattr(config, lang), lora_targets=())})


def _plain(tree):
    from flax.core import unfreeze

    return unfreeze(tree)
