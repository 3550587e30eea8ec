"""Checkpoints of the embedded runner: orbax, atomic, the last N kept, resumed automatically.

A checkpoint step directory holds three items:

  state/   the train state (params, optimizer state, step) as an orbax pytree
  data/    the input iterator's position (a tf.data iterator checkpoint), so that a
           resumed run reads exactly the batches the uninterrupted run would have read
  meta/    JSON: the step, the last loss, wall time

orbax writes each step into a temporary directory and renames it when complete, so a
process killed at any moment (even `kill -9` in the middle of a save) leaves either
the previous checkpoint or the new one, never half of one; the temporary leftovers
are removed on the next start.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

import orbax.checkpoint as ocp
from etils import epath

from palimix.errors import PalimixError


class MissingCheckpointError(PalimixError, FileNotFoundError):
    """No checkpoint where the user pointed."""


class StatefulIterator(Protocol):
    """What the `data` item needs from an input iterator."""

    def save_state(self, directory: str) -> None: ...

    def restore_state(self, directory: str) -> None: ...


@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    iterator: StatefulIterator


@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    iterator: StatefulIterator


class IteratorHandler(ocp.CheckpointHandler):
    """Saves an input iterator's position inside an orbax checkpoint step (synchronously:
    the position must be the one at the moment of the save)."""

    def save(self, directory: epath.Path, args: IteratorSave):
        directory.mkdir(parents=True, exist_ok=True)
        args.iterator.save_state(os.fspath(directory))

    def restore(self, directory: epath.Path, args: IteratorRestore):
        args.iterator.restore_state(os.fspath(directory))
        return args.iterator


ocp.args.register_with_handler(IteratorHandler, for_save=True)(IteratorSave)
ocp.args.register_with_handler(IteratorHandler, for_restore=True)(IteratorRestore)


class Checkpoints:
    """The checkpoints under `<model_dir>/checkpoints`."""

    def __init__(self, model_dir: str, *, keep: int = 3, read_only: bool = False):
        # Orbax writes arrays only to absolute paths; a relative --model_dir (the demo's
        # default palimix_runs/demo) is taken from the working directory.
        local = "://" not in model_dir
        self.directory = epath.Path(os.path.abspath(model_dir) if local else model_dir) / "checkpoints"
        if read_only and not self.directory.exists():
            raise MissingCheckpointError(f"no checkpoints in {model_dir} (expected {self.directory}).")
        options = ocp.CheckpointManagerOptions(
            # Read only: nothing is saved or deleted (given explicitly, orbax does not
            # warn that it overrides them).
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            # Small models: a synchronous save costs little and keeps the state that is
            # saved identical to the state at that step, iterator included.
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "data": IteratorHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, iterator: StatefulIterator | None, meta: dict) -> None:
        items = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(dict(meta, step=step))}
        if iterator is not None:
            items["data"] = IteratorSave(iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, *, step: int | None = None,
                iterator: StatefulIterator | None = None, partial: bool = False) -> tuple[Any, dict]:
        """The state at `step` (default: the latest), restored with `abstract_state`'s
        shapes and shardings; the iterator (if given) is moved to that step's position."""
        step = self.latest_step() if step is None else step
        if step is None:  # pragma: no cover - callers check latest_step() first

            raise MissingCheckpointError(f"no checkpoint in {self.directory}.")
        if step not in self.all_steps():
            raise MissingCheckpointError(
                f"no checkpoint for step {step} in {self.directory}; steps there: {self.all_steps()}.")
        # partial: restore only the entries of `abstract_state` (eval/infer need the
        # params, not the optimizer state).
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        items = {"state": ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args,
                                                 partial_restore=partial),
                 "meta": ocp.args.JsonRestore()}
        if iterator is not None:
            items["data"] = IteratorRestore(iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], dict(restored["meta"] or {})

    def close(self) -> None:
        self._manager.close()


def find_checkpoint(path: str) -> tuple[str, int | None]:
    """`(model_dir, step)` from a model dir, its `checkpoints/` folder or one step folder."""
    p = epath.Path(path)
    if not p.exists():
        raise MissingCheckpointError(f"checkpoint path {path} does not exist.")
    if (p / "checkpoints").is_dir():
        return os.fspath(p), None
    if p.name == "checkpoints":
        return os.fspath(p.parent), None
    if p.parent.name == "checkpoints" and p.name.isdigit():
        return os.fspath(p.parent.parent), int(p.name)
    raise MissingCheckpointError(
        f"{path} holds no palimix checkpoints (expected a model dir with a checkpoints/ folder, "
        "as `palimix train --model_dir` writes).")
