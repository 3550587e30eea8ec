"""The model of a run: which network (a `configs.get` name plus overrides) and which of
its parameters train (`trainable.ParamSelection`).

It comes from the same gin bindings T5X reads -- `configs.get.*` (models/
network.gin and a sizes/ file: MODEL_SIZE, IMAGE_SIZE, DROPOUT_RATE, dtype,
remat, ...) and `ParamSelection.*` -- so one set of gin files trains the same network
either way. A run records it in `run.json` (name, overrides, the whole resulting
config, the selection), and `palimix eval` / `infer` rebuild exactly that config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from palimix.errors import UsageError
from palimix.models import configs
from palimix.models.trainable import ParamSelection

DEFAULT_MODEL = "tiny"


@dataclasses.dataclass(frozen=True)
class ModelDefinition:
    name: str
    overrides: Mapping[str, Any]
    config: configs.PaliConfig
    trainable: ParamSelection = ParamSelection()

    @classmethod
    def create(cls, name: str, overrides: Mapping[str, Any] | None = None,
               trainable: ParamSelection | None = None) -> "ModelDefinition":
        overrides = dict(overrides or {})
        return cls(name, overrides, configs.get(name, **overrides), trainable or ParamSelection())

    def to_json(self) -> dict:
        return {"name": self.name, "overrides": dict(self.overrides), "config": configs.to_dict(self.config),
                "trainable": self.trainable.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ModelDefinition":
        """The model a run recorded: its config exactly as it trained (not rebuilt from the
        name, whose table entry may have changed since)."""
        if "config" not in data:
            raise UsageError("run.json records no model config (written by an older palimix); "
                             "train the run again with this version.")
        return cls(data["name"], dict(data["overrides"]), configs.from_dict(data["config"]),
                   ParamSelection(**data["trainable"]))

    def check_vocabulary(self, vocab_size: int) -> None:
        """The tasks' token ids must fit the network's embedding."""
        if vocab_size > self.config.vocab_size:
            raise UsageError(
                f"the tasks' vocabulary has {vocab_size} ids but model {self.name!r} embeds "
                f"{self.config.vocab_size}; bind `configs.get.vocab_size = "
                f"{configs.round_vocab_size(vocab_size)}` (gin) or pick a model for this vocabulary.")


def from_gin(name: str | None = None, overrides: Mapping[str, Any] | None = None,
             trainable: ParamSelection | None = None) -> ModelDefinition:
    """The model gin's bindings describe, with explicit arguments taking precedence:
    `name` over `configs.get.name`, `overrides` over the other `configs.get` bindings,
    `trainable` over the `ParamSelection` bindings."""
    bound = gin_bindings(configs.get)
    bound_name = bound.pop("name", None)
    return ModelDefinition.create(name or bound_name or DEFAULT_MODEL, {**bound, **(overrides or {})},
                                  trainable or ParamSelection(**gin_bindings(ParamSelection)))


def gin_bindings(fn) -> dict:
    """gin's current bindings of `fn` (macros resolved); {} when nothing binds it.

    palimix registers `fn` under its own module name, as the gin files' dynamic
    registration (`from palimix.models import configs`) does, so asking works whether
    or not a gin file was parsed.
    """
    import gin

    gin.config.register(fn, module=fn.__module__)
    # A macro declared %gin.REQUIRED (MODEL_SIZE, IMAGE_SIZE before a sizes/ file) is not
    # a binding yet: the defaults apply.
    return {k: v for k, v in gin.get_bindings(fn).items() if v is not gin.REQUIRED}
