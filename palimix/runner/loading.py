"""Load a trained run back from its model dir (for eval and infer): the network it
trained, its settings, and the parameters of one checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from palimix.runner.checkpoints import Checkpoints, MissingCheckpointError, find_checkpoint


@dataclasses.dataclass
class LoadedRun:
    model_dir: str
    step: int
    description: dict  # run.json: the model (config and all), mixture, task feature lengths, seed, batch size
    train_config: dict
    trainer: Any  # palimix.runner.trainer.Trainer (network, mesh, shardings)
    params: Any

    @property
    def task_feature_lengths(self) -> dict:
        return dict(self.description["task_feature_lengths"])

    @property
    def mixture_or_task_name(self) -> str:
        return self.description["mixture_or_task_name"]

    def feature_converter(self):
        """The seqio feature converter of the run's network (what eval reads)."""
        from palimix.models import networks

        return networks.feature_converter(self.trainer.definition.config)


def load_run(path: str, *, step: int | None = None, batch_size: int = 1) -> LoadedRun:
    """`path`: a model dir (latest checkpoint), or one `checkpoints/<step>` folder."""
    import jax

    from palimix.runner.model import ModelDefinition
    from palimix.runner.trainer import Trainer

    model_dir, path_step = find_checkpoint(path)
    step = path_step if step is None else step
    run_json = os.path.join(model_dir, "run.json")
    if not os.path.exists(run_json):
        raise MissingCheckpointError(f"{model_dir} has no run.json: not a `palimix train` model dir.")
    with open(run_json, encoding="utf-8") as f:
        description = json.load(f)
    with open(os.path.join(model_dir, "train_config.json"), encoding="utf-8") as f:
        train_config = json.load(f)
    # Exactly the network the run trained (its recorded config), whatever gin says now.
    definition = ModelDefinition.from_json(description["model"])
    mesh = serving_mesh(description.get("mesh"), batch_size, jax.device_count())
    trainer = Trainer(definition, description["task_feature_lengths"], batch_size=batch_size,
                      seed=description.get("seed", 0), mesh=mesh,
                      devices=jax.devices()[: mesh["data"] * mesh["model"]])
    checkpoints = Checkpoints(model_dir, read_only=True)
    try:
        if checkpoints.latest_step() is None:
            raise MissingCheckpointError(f"{model_dir} has no finished checkpoint yet.")
        abstract_state = {"step": jax.ShapeDtypeStruct((), "int32", sharding=trainer.replicated),
                          "params": trainer.abstract_params()}
        state, _ = checkpoints.restore(abstract_state, step=step, partial=True)
    finally:
        checkpoints.close()
    return LoadedRun(model_dir=model_dir, step=int(state["step"]), description=description,
                     train_config=train_config, trainer=trainer, params=state["params"])


def serving_mesh(recorded: dict | None, batch_size: int, device_count: int) -> dict[str, int]:
    """The mesh eval and infer run on: the run's model-parallel width when the devices
    allow it (its parameters are laid out for it), and as many data-parallel groups as
    divide the batch (one request on an 8-device machine runs on one group, not on a
    batch it cannot split)."""
    model = (recorded or {}).get("model", 1)
    if device_count % model:
        model = 1
    groups = device_count // model
    data = max(d for d in range(1, groups + 1) if groups % d == 0 and batch_size % d == 0)
    return {"data": data, "model": model}
