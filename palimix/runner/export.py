"""Exporting a trained run: `merge_lora` writes a run whose LoRA adapters are folded
into the frozen weights (`palimix.models.lora.merge`), with LoRA off in its recorded
config, so `palimix eval` / `infer` (and anything reading plain weights) use it as an
ordinary model dir with the same logits."""

from __future__ import annotations

import json
import os
import re
import shutil

from palimix.errors import UsageError

# Overrides that set the language model's LoRA fields, with or without a tower prefix
# (configs.get: `lora_rank`, `lm_lora_rank`, `text_lora_rank`, `llm_lora_rank`).
_LORA_OVERRIDE = re.compile(r"((lm|text|llm)_)?lora_[a-z_]+")


def merge_lora(run_dir: str, out_dir: str, *, step: int | None = None) -> str:
    """Writes `out_dir` (run.json, train_config.json, checkpoints/<step>/ with the
    parameters only) from the run at `run_dir`; returns `out_dir`."""
    import jax
    import jax.numpy as jnp

    from palimix.models import lora, networks, trainable
    from palimix.runner.checkpoints import Checkpoints
    from palimix.runner.loading import load_run
    from palimix.runner.model import ModelDefinition

    if os.path.exists(os.path.join(out_dir, "checkpoints")):
        raise UsageError(f"{out_dir} already holds checkpoints: export into a new folder.")
    run = load_run(run_dir, step=step)
    definition = run.trainer.definition
    lm_config = getattr(definition.config, _language_field(definition.config))
    if not lm_config.lora_targets:
        raise UsageError(f"{run.model_dir} trained no LoRA adapters (its config has no lora_targets).")
    merged = lora.merge(jax.device_get(run.params), lora.config_of(lm_config).scale)
    config = lora.without_lora(definition.config)
    names = trainable.flat_names(jax.eval_shape(lambda: networks.init_params(config, jax.random.PRNGKey(0))))
    merged_definition = ModelDefinition(
        definition.name, {k: v for k, v in definition.overrides.items() if not _LORA_OVERRIDE.fullmatch(k)},
        config, _still_matching(definition.trainable, names))
    description = json.loads(json.dumps(dict(run.description, model=merged_definition.to_json(),
                                             merged_lora_from=os.path.abspath(run.model_dir))))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump(description, f, indent=1, ensure_ascii=False)
    shutil.copyfile(os.path.join(run.model_dir, "train_config.json"), os.path.join(out_dir, "train_config.json"))
    checkpoints = Checkpoints(out_dir)
    try:
        state = {"step": jnp.asarray(run.step, jnp.int32), "params": jax.tree_util.tree_map(jnp.asarray, merged)}
        checkpoints.save(run.step, state, None, {"merged_lora_from": os.path.abspath(run.model_dir)})
    finally:
        checkpoints.close()
    return out_dir


def _language_field(config) -> str:
    from palimix.models import configs

    return configs.FAMILIES[configs.family_of(config)].language_field


def _still_matching(selection, names):
    """The run's trainable selection without the patterns that only named adapters
    (they match nothing once merged); everything trains if none is left."""
    from palimix.models.trainable import ParamSelection

    def keep(patterns):
        return tuple(p for p in patterns if any(re.fullmatch(p, n) for n in names))

    trainable_patterns = keep(selection.trainable)
    return ParamSelection(trainable=trainable_patterns or (".*",), frozen=keep(selection.frozen))
