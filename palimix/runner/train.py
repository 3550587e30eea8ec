"""The embedded training loop: one machine, every local device, no T5X.

    from palimix.runner import train
    result = train.train(train.TrainConfig(mixture_or_task_name="palimix_demo",
                                           model_dir="/tmp/run", train_steps=2000))

Data parallel over `jax.devices()`, or on a ("data", "model") mesh with `TrainConfig.mesh`
(`--mesh data=2,model=4`) (`palimix.runner.trainer.Trainer`: the network, mesh and
compiled step); optax (Adafactor by default, warmup then rsqrt/cosine decay)
over the trainable parameters only; orbax checkpoints with the input position,
resumed automatically from `model_dir`; TensorBoard summaries and `metrics.jsonl`; a
progress bar; a loss that becomes NaN or Inf stops the run with the last good
checkpoint kept.

The network is the one gin's `configs.get` bindings describe (as in T5X), and
`run.json` records it whole (`palimix.runner.model`).

Determinism: the dropout key of step `s` is `fold_in(key(seed), s)` and the input
position is restored exactly, so a run killed at any point and started again with
the same command continues the same loss curve.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Mapping

import gin

from palimix.errors import PalimixError, UsageError
from palimix.models.trainable import ParamSelection

log = logging.getLogger(__name__)


class NonFiniteLossError(PalimixError, FloatingPointError):
    """The loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


@gin.configurable(module="palimix.runner")
@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Flags, gin (`TrainConfig.batch_size = 64`) or Python."""

    mixture_or_task_name: str = "palimix_demo"
    model_dir: str = "palimix_runs/default"
    # {"inputs": L, "targets": T, "image": S}; None: the demo's lengths at the model's image size.
    task_feature_lengths: Mapping[str, int] | None = None
    # The network: a palimix.models.configs name and `configs.get` overrides. Both add to
    # (and win over) gin's `configs.get` bindings; no name anywhere: "tiny".
    model: str | None = None
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Which parameters train; None: gin's `ParamSelection` bindings (default: all).
    trainable: ParamSelection | None = None
    batch_size: int = 32
    train_steps: int = 1000
    optimizer: str = "adafactor"
    learning_rate: float = 1e-2
    schedule: str = "rsqrt"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    clip_gradient_norm: float | None = None
    z_loss: float = 1e-4
    seed: int = 0
    split: str = "train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    progress: bool = True
    # Input: "memory" preprocesses the split once and samples batches with numpy (no
    # tf.data competing with the step for the cores); "stream" reads seqio's tf.data
    # pipeline; "auto" picks memory when every example with its own image fits in
    # memory_limit_mb. memory_passes: epochs of random preprocessing kept in memory.
    input_mode: str = "auto"
    memory_limit_mb: float = 1024
    memory_passes: int = 2
    # Warm start of a new run (not of a resumed one): the parameters a public checkpoint
    # holds (`palimix.models.checkpoints.WARM_START_FORMATS`: "paligemma", "gemma",
    # "vit", "mt5", "qformer", or "palimix": another palimix run's model dir) replace the
    # fresh ones before step 0. The format is always explicit.
    init_checkpoint: str | None = None
    init_format: str | None = None
    # The device mesh: {"data": n, "model": m} (`--mesh data=2,model=4`); None: every
    # device data parallel. run.json records the mesh used; a run resumes on any mesh.
    mesh: Mapping[str, int] | None = None

    def validate(self) -> None:
        for name in ("batch_size", "train_steps", "checkpoint_every", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.memory_passes < 1:
            raise UsageError(f"--memory_passes must be >= 1, got {self.memory_passes}.")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup_steps must be >= 0, got {self.warmup_steps}.")
        missing = {"inputs", "targets", "image"} - set(self.task_feature_lengths or {})
        if missing:
            raise UsageError(f"task_feature_lengths needs {sorted(missing)} (got {self.task_feature_lengths}); "
                             "e.g. {'inputs': 32, 'targets': 16, 'image': 32}.")
        self._validate_warm_start()

    def _validate_warm_start(self) -> None:
        if (self.init_checkpoint is None) != (self.init_format is None):
            raise UsageError("--init_checkpoint and --init_format go together: the format is never guessed "
                             "from the file name.")
        if self.init_format is not None:
            from palimix.models import checkpoints

            checkpoints.warm_start_format(self.init_format)
            local = self.init_checkpoint.partition(".npz:")[0]  # big_vision's "file.npz:img" names a sub-model
            if "://" not in local and not any(os.path.exists(p) for p in (local, local + ".npz")):
                raise UsageError(f"--init_checkpoint {self.init_checkpoint}: no such file or folder.")


@dataclasses.dataclass
class TrainResult:
    step: int
    start_step: int
    last_loss: float | None
    seconds: float
    steps_per_s: float  # Excluding the first step of this process (compilation).
    input_wait_share: float  # Time waiting for input batches / wall time of the steps.
    model_dir: str


def default_task_feature_lengths() -> dict[str, int]:
    from palimix.tasks import demo

    return dict(demo.TASK_FEATURE_LENGTHS)


def resolve_model(config: TrainConfig):
    """(config with its task feature lengths filled in, the run's ModelDefinition).

    The network's image size and the tasks' image length are one number: lengths
    without an image size take the model's; a model without a bound image size takes
    the lengths'; both given must agree.
    """
    from palimix.runner import model as model_lib

    definition = model_lib.from_gin(config.model, config.model_overrides, config.trainable)
    model_size = definition.config.vit.image_size
    if config.task_feature_lengths is None:
        lengths = {**default_task_feature_lengths(), "image": model_size}
        return dataclasses.replace(config, task_feature_lengths=lengths), definition
    image_length = int(config.task_feature_lengths.get("image", model_size))
    if image_length != model_size:
        if "image_size" in definition.overrides:
            raise UsageError(f"the model's image_size is {model_size} (gin's IMAGE_SIZE or an override) but the "
                             f"task feature lengths say image={image_length}; the network and the tasks must agree.")
        definition = model_lib.ModelDefinition.create(
            definition.name, {**definition.overrides, "image_size": image_length}, definition.trainable)
    return config, definition


def run_description(config: TrainConfig, definition, input_mode: str) -> dict:
    """What run.json records (as JSON reads it back: tuples become lists)."""
    return json.loads(json.dumps({
        "model": definition.to_json(), "mixture_or_task_name": config.mixture_or_task_name,
        "task_feature_lengths": dict(config.task_feature_lengths), "seed": config.seed,
        "batch_size": config.batch_size, "input_mode": input_mode,
        "init_checkpoint": config.init_checkpoint, "init_format": config.init_format}))


def _check_same_run(model_dir: str, description: dict) -> None:
    """Refuse to resume a model dir written by a different run (a wrong --model_dir
    would otherwise fail deep inside the checkpoint restore)."""
    path = os.path.join(model_dir, "run.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        before = json.load(f)
    before, now = _flat(before), _flat(description)
    differences = [k for k in now if before.get(k) != now[k]]
    if differences:
        details = "; ".join(f"{k}: {before.get(k)} -> {now[k]}" for k in differences)
        raise UsageError(f"{model_dir} holds a run with other settings ({details}). "
                         "Use a new --model_dir, or the settings of that run to resume it.")


def _flat(tree: Mapping, prefix: str = "") -> dict:
    """{"model.config.remat": "full", ...}: nested settings as dotted leaves."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_json_atomically(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def _test_sigkill_step() -> int | None:
    """Tests: $PALIMIX_TEST_SIGKILL_AFTER_STEP=N makes the run SIGKILL itself right after
    step N, a crash at a known step (tests/test_runner_resume.py), with no timing race."""
    value = os.environ.get("PALIMIX_TEST_SIGKILL_AFTER_STEP")
    return int(value) if value else None


def build_trainer(config: TrainConfig, definition):
    """The run's Trainer with its optimizer and learning-rate schedule."""
    from palimix.runner import schedules
    from palimix.runner.trainer import Trainer

    schedule = schedules.learning_rate_schedule(
        config.schedule, base_learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        total_steps=config.train_steps)
    tx = schedules.optimizer(config.optimizer, schedule, weight_decay=config.weight_decay,
                             clip_gradient_norm=config.clip_gradient_norm)
    return Trainer(definition, config.task_feature_lengths, batch_size=config.batch_size, tx=tx,
                   schedule=schedule, z_loss=config.z_loss, seed=config.seed, mesh=config.mesh)


def train(config: TrainConfig, *, stop_after: int | None = None) -> TrainResult:
    """Trains until `config.train_steps` (resuming from `model_dir` when it holds a
    checkpoint). `stop_after`: return after that many steps of this call (tests)."""
    from palimix.models import networks, partitioning
    from palimix.runner import checkpoints as checkpoints_lib
    from palimix.runner import data as data_lib
    from palimix.runner import inputs

    config, definition = resolve_model(config)
    config.validate()
    provider = data_lib.get_mixture_or_task(config.mixture_or_task_name)
    definition.check_vocabulary(provider.output_features["targets"].vocabulary.vocab_size)
    input_mode = inputs.choose_input_mode(config.input_mode, config.mixture_or_task_name, config.split,
                                          config.task_feature_lengths, config.memory_limit_mb)
    description = run_description(config, definition, input_mode)
    _check_same_run(config.model_dir, description)

    trainer = build_trainer(config, definition)
    checkpoints = checkpoints_lib.Checkpoints(config.model_dir, keep=config.keep_checkpoints)
    finished = (checkpoints.latest_step() or 0) >= config.train_steps
    # A finished run needs no input pipeline (building a large mixture's takes a while).
    batches = None if finished else inputs.train_batches(
        input_mode, config.mixture_or_task_name, config.task_feature_lengths, config.batch_size,
        converter=networks.feature_converter(definition.config), seed=config.seed, split=config.split,
        memory_passes=config.memory_passes)
    state = _initial_state(trainer, checkpoints, batches, config)
    # The mesh is recorded, not compared: checkpoints restore onto any mesh.
    _write_json_atomically(os.path.join(config.model_dir, "run.json"),
                           {**description, "mesh": partitioning.mesh_shape(trainer.mesh)})
    _write_json_atomically(os.path.join(config.model_dir, "train_config.json"), _config_json(config, definition))
    loop = TrainLoop(config, trainer, checkpoints, batches, start_step=int(state["step"]))
    return loop.run(state, stop_after)


def _initial_state(trainer, checkpoints, batches, config: TrainConfig) -> dict:
    """A fresh (or warm-started) state, or the latest checkpoint's (and the input
    position with it)."""
    import jax

    model_dir = config.model_dir
    state = trainer.init_state()
    if checkpoints.latest_step() is None:
        return _warm_started(state, config)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state, _ = checkpoints.restore(abstract, iterator=batches)
    log.info("Resumed %s from step %d.", model_dir, int(state["step"]))
    print(f"resuming from the checkpoint at step {int(state['step'])} in {model_dir}", file=sys.stderr, flush=True)
    return state


def _warm_started(state: dict, config: TrainConfig) -> dict:
    """`state` with the parameters of `config.init_checkpoint` (the optimizer state stays
    the fresh one: it does not depend on the parameters' values)."""
    from palimix.models import checkpoints

    if config.init_checkpoint is None:
        return state
    params = checkpoints.warm_start(state["params"], config.init_checkpoint, config.init_format)
    print(f"warm start: {config.init_format} checkpoint {config.init_checkpoint}", file=sys.stderr, flush=True)
    return {**state, "params": params}


def _config_json(config: TrainConfig, definition) -> dict:
    values = dataclasses.asdict(config)
    values["trainable"] = definition.trainable.to_dict()
    return values


class TrainLoop:
    """Runs the steps of one `train` call: dispatches steps, reads their metrics back one
    step late (so the host never waits for the step it just dispatched), logs them,
    stops on NaN/Inf, saves checkpoints."""

    def __init__(self, config: TrainConfig, trainer, checkpoints, batches, *, start_step: int):
        from palimix.runner.progress import Progress
        from palimix.runner.summaries import Summaries

        self.config, self.trainer, self.checkpoints, self.batches = config, trainer, checkpoints, batches
        self.start_step = self.step = start_step
        self.last_saved = start_step if checkpoints.latest_step() is not None else None
        self.last_loss: float | None = None
        self.pending: list[tuple[int, Any]] = []  # Step metrics not yet read back from the device.
        self.interval = _Interval()
        self.summaries = Summaries(config.model_dir)
        self.progress = Progress(config.train_steps, start_step, config.batch_size, enabled=config.progress)

    def run(self, state, stop_after: int | None) -> TrainResult:
        config = self.config
        end_step = config.train_steps if stop_after is None else min(config.train_steps, self.start_step + stop_after)
        wall_start = time.perf_counter()
        self.interval.start = wall_start
        steady = None  # (time, input wait) after the first, compiling step.
        try:
            with self.trainer.context():
                while self.step < end_step:
                    state = self._one_step(state, end_step)
                    if steady is None:
                        steady = (time.perf_counter(), self.batches.wait_seconds)
                self._resolve(keep_last=0, end_step=end_step)
        finally:
            self.progress.close()
            self.summaries.close()
            self.checkpoints.close()
        return self._result(wall_start, steady)

    def _one_step(self, state, end_step: int):
        import jax

        state, metrics = self.trainer.train_step(state, self.trainer.shard_batch(next(self.batches)))
        self.step += 1
        self.pending.append((self.step, metrics))
        if self.step == self.start_step + 1:
            jax.block_until_ready(metrics)  # The compiling step: steady-state timing starts after it.
        self._resolve(keep_last=1, end_step=end_step)
        if self.step % self.config.checkpoint_every == 0 or self.step == self.config.train_steps:
            self._resolve(keep_last=0, end_step=end_step)  # Never save past a NaN.
            self.checkpoints.save(self.step, state, self.batches, {"loss": self.last_loss, "time": time.time()})
            self.last_saved = self.step
        if self.step == _test_sigkill_step():
            self._resolve(keep_last=0, end_step=end_step)  # This step's metrics are written; then die uncleanly.
            os.kill(os.getpid(), signal.SIGKILL)
        return state

    def _resolve(self, *, keep_last: int, end_step: int) -> None:
        """Reads back all step metrics but the newest `keep_last`; logs; stops on NaN/Inf."""
        import jax

        while len(self.pending) > keep_last:
            done_step, metrics = self.pending.pop(0)
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            self._check_finite(done_step, values)
            self.last_loss = values["loss"]
            self.interval.add(values)
            if done_step % self.config.log_every == 0 or done_step == end_step:
                self._log(done_step, values["learning_rate"])

    def _check_finite(self, step: int, values: Mapping[str, float]) -> None:
        import math

        if math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"]):
            return
        where = (f"the last good checkpoint (step {self.last_saved}) is kept in {self.checkpoints.directory}"
                 if self.last_saved is not None else "no checkpoint was written before it")
        raise NonFiniteLossError(
            f"the loss became {values['loss']} (gradient norm {values['grad_norm']}) at step {step}; training "
            f"stopped and {where}. Try a lower --learning_rate, more --warmup_steps or --clip_gradient_norm 1.0.")

    def _log(self, step: int, learning_rate: float) -> None:
        now = time.perf_counter()
        row, steps_per_s = self.interval.flush(now)
        row.update(learning_rate=learning_rate, steps_per_s=steps_per_s,
                   examples_per_s=steps_per_s * self.config.batch_size)
        self.summaries.scalars(step, row)
        self.progress.update(step, row["loss"], steps_per_s)

    def _result(self, wall_start: float, steady) -> TrainResult:
        end = time.perf_counter()
        steady_steps = self.step - self.start_step - 1
        steady_seconds = end - steady[0] if steady else 0.0
        wait_share = ((self.batches.wait_seconds - steady[1]) / steady_seconds
                      if steady and steady_seconds > 0 else 0.0)
        return TrainResult(
            step=self.step, start_step=self.start_step, last_loss=self.last_loss, seconds=end - wall_start,
            steps_per_s=steady_steps / steady_seconds if steady_steps > 0 and steady_seconds > 0 else 0.0,
            input_wait_share=wait_share, model_dir=self.config.model_dir)


class _Interval:
    """Sums of the step metrics since the last log line."""

    AVERAGED = ("loss", "cross_entropy", "token_accuracy", "grad_norm")

    def __init__(self):
        self.start = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(self.AVERAGED, 0.0)
        self.count = 0

    def add(self, values: Mapping[str, float]) -> None:
        for k in self.AVERAGED:
            self.sums[k] += values[k]
        self.count += 1

    def flush(self, now: float) -> tuple[dict, float]:
        """(averages, steps per second) of the interval; starts the next one at `now`."""
        row = {k: v / self.count for k, v in self.sums.items()}
        steps_per_s = self.count / max(now - self.start, 1e-9)
        self._reset()
        self.start = now
        return row, steps_per_s
