"""Which parameters train: a selection by regular expressions over parameter names.

Names are the parameter's path joined by "/", as big_vision writes them
(`img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel`, `img_proj/kernel`,
`encoder/layers_0/attention/query/kernel`, ...). A parameter trains when its name
fully matches one of `trainable` and none of `frozen`:

    ParamSelection()                                   # everything trains
    ParamSelection(frozen=("img/.*",))                 # a frozen ViT
    ParamSelection(trainable=("img_proj/.*",))         # only the projection (mBLIP warm-up)

Frozen parameters get no optimizer state and no update (no weight decay either): the
embedded runner differentiates only the trainable ones, and T5X wraps its optimizer
in a `MultiOptimizer` over the trainable ones (`t5x_model.trainable_optimizer`). In
gin, `palimix.models.trainable.ParamSelection` is bound once (models/network.gin
declares `TRAINABLE_PARAMS`) and read by both.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from flax import traverse_util

from palimix.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ParamSelection:
    trainable: tuple[str, ...] = (".*",)
    frozen: tuple[str, ...] = ()

    def __post_init__(self):
        # gin and JSON give lists; a lone string would be read letter by letter.
        for field in ("trainable", "frozen"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise UsageError(f"ParamSelection.{field} is a list of patterns, got the string {value!r}.")
            object.__setattr__(self, field, tuple(value))
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise UsageError(f"ParamSelection.{field}: bad pattern {pattern!r} ({e}).") from None

    @property
    def trains_everything(self) -> bool:
        return not self.frozen and ".*" in self.trainable

    def is_trainable(self, name: str) -> bool:
        return (any(re.fullmatch(p, name) for p in self.trainable)
                and not any(re.fullmatch(p, name) for p in self.frozen))

    def mask(self, params) -> Any:
        """A tree like `params` with True where a parameter trains.

        Every pattern must match some parameter: a typo would otherwise freeze or train
        nothing without a word.
        """
        names = list(flat_names(params))
        for field in ("trainable", "frozen"):
            for pattern in getattr(self, field):
                if not any(re.fullmatch(pattern, n) for n in names):
                    raise UsageError(f"ParamSelection.{field} pattern {pattern!r} matches none of the "
                                     f"{len(names)} parameters; names look like {', '.join(names[:3])}.")
        leaves = traverse_util.flatten_dict(_plain(params))
        flat = {path: self.is_trainable("/".join(path)) for path in leaves}
        if not any(flat.values()):
            raise UsageError(f"{self} leaves no parameter to train.")
        # int8-stored weights (palimix.models.quantize) have no gradient.
        integer = ["/".join(p) for p, trains in flat.items() if trains and _is_integer(leaves[p])]
        if integer:
            raise UsageError(f"{self} trains {len(integer)} int8-stored weights (e.g. {integer[0]}), which cannot "
                             "train: freeze them (int8_kernels is for a frozen language model, e.g. with "
                             "models/mblip_lora.gin's selection).")
        return traverse_util.unflatten_dict(flat)

    def to_dict(self) -> dict:
        return {"trainable": list(self.trainable), "frozen": list(self.frozen)}


def _is_integer(leaf) -> bool:
    import numpy as np

    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and np.issubdtype(dtype, np.integer)


def flat_names(params) -> Sequence[str]:
    """Every parameter's name ("a/b/kernel"), in tree order."""
    return ["/".join(path) for path in traverse_util.flatten_dict(_plain(params))]


def split(params, mask) -> tuple[Any, Any]:
    """(trainable, frozen): two trees holding the parameters `mask` marks True / False."""
    flat, flat_mask = traverse_util.flatten_dict(_plain(params)), traverse_util.flatten_dict(_plain(mask))
    trainable = {k: v for k, v in flat.items() if flat_mask[k]}
    frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen) -> Any:
    """The inverse of `split`."""
    flat = {**traverse_util.flatten_dict(_plain(trainable)), **traverse_util.flatten_dict(_plain(frozen))}
    return traverse_util.unflatten_dict(flat)


def _plain(tree):
    """flax FrozenDicts as dicts (flatten_dict wants Mappings it can walk)."""
    from flax.core import unfreeze

    return unfreeze(tree)
