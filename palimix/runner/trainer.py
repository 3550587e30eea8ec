"""The network, optimizer, mesh and compiled train step of one run (eval and infer
use it too, to build parameters of the right shapes and shardings).

Everything model-specific comes from `palimix.models`: the network (`networks.build`),
its logical axes and mesh rules (`partitioning`), the loss (`losses`) and which
parameters train (`trainable`). Frozen parameters are not differentiated and have no
optimizer state: the state is `{"step", "params", "opt_state"}` with `opt_state` over
the trainable parameters only.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from palimix.errors import UsageError
from palimix.models import losses, networks, partitioning, trainable
from palimix.runner.model import ModelDefinition

METRICS = ("loss", "cross_entropy", "token_accuracy", "grad_norm", "learning_rate")


class Trainer:
    def __init__(self, definition: ModelDefinition, task_feature_lengths: Mapping[str, int], *,
                 batch_size: int, tx=None, schedule=None, z_loss: float = 1e-4, seed: int = 0):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        self.definition = definition
        self.network = networks.build(definition.config)
        self.task_feature_lengths = dict(task_feature_lengths)
        self.tx, self.schedule, self.z_loss, self.seed = tx, schedule, z_loss, seed
        devices = jax.devices()
        if batch_size % len(devices):
            raise UsageError(f"the batch size {batch_size} must be a multiple of the {len(devices)} "
                             "devices it is split over.")
        # Data parallel: parameters placed by the model's logical-axis rules (replicated
        # on a (n, 1) mesh), batches split over "data".
        self.mesh = partitioning.make_mesh(data=len(devices), model=1, devices=devices)
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        abstract = jax.eval_shape(self._init_variables, jax.random.key(0))
        self.param_shardings = partitioning.param_shardings(abstract["params_axes"], self.mesh)
        self.trainable_mask = definition.trainable.mask(abstract["params"])

    def _init_variables(self, rng):
        batch = networks.dummy_batch(self.definition.config, 1, self.task_feature_lengths)
        return self.network.init({"params": rng, "dropout": rng}, *networks.inputs(self.network, batch),
                                 enable_dropout=False)

    def context(self):
        """The mesh every jitted call runs under. Activations follow the batch's
        data-parallel sharding by XLA's propagation, so the model's logical constraints
        are left inactive (on a ("data", "model") mesh of shape (n, 1) they would only
        restate that)."""
        return self.mesh

    def split(self, params) -> tuple[Any, Any]:
        """(trainable, frozen) parameters."""
        return trainable.split(params, self.trainable_mask)

    def init_params(self):
        import jax

        with self.context():
            init = jax.jit(lambda rng: self._init_variables(rng)["params"], out_shardings=self.param_shardings)
            return init(jax.random.key(self.seed))

    def init_state(self) -> dict:
        import jax
        import jax.numpy as jnp

        params = self.init_params()
        with self.context():
            opt_state = jax.jit(lambda p: self.tx.init(self.split(p)[0]),
                                out_shardings=self.opt_state_shardings())(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
        return {"step": step, "params": params, "opt_state": opt_state}

    def opt_state_shardings(self):
        """Optimizer state is replicated: on a (n, 1) mesh that is all data parallelism
        needs, and Adafactor's factored statistics are small."""
        import jax

        trainable_params = self.split(self.abstract_params())[0]
        return jax.tree.map(lambda _: self.replicated, jax.eval_shape(self.tx.init, trainable_params))

    def state_shardings(self) -> dict:
        return {"step": self.replicated, "params": self.param_shardings, "opt_state": self.opt_state_shardings()}

    def abstract_params(self):
        import jax

        shapes = jax.eval_shape(lambda: self._init_variables(jax.random.key(0))["params"])
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.param_shardings)

    def shard_batch(self, batch: Mapping[str, Any]):
        import jax

        return jax.device_put(dict(batch), self.batch_sharding)

    def loss(self, params, batch, dropout_key) -> tuple[Any, losses.TokenLoss]:
        logits = self.network.apply({"params": params}, *networks.inputs(self.network, batch), enable_dropout=True,
                                    rngs={"dropout": dropout_key})
        token_loss = losses.cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                          z_loss=self.z_loss)
        return token_loss.mean, token_loss

    @functools.cached_property
    def train_step(self) -> Callable:
        """`(state, batch) -> (state, metrics)`, compiled once with fixed shardings."""
        import jax

        # Fixed in/out shardings: the state a step returns is placed exactly like the one
        # it received, so the second step reuses the first step's compiled program.
        shardings = self.state_shardings()
        return jax.jit(self._step, donate_argnums=0, in_shardings=(shardings, self.batch_sharding),
                       out_shardings=(shardings, self.replicated))

    def _step(self, state, batch):
        import jax
        import jax.numpy as jnp
        import optax

        dropout_key = jax.random.fold_in(jax.random.key(self.seed), state["step"])
        trainable_params, frozen_params = self.split(state["params"])

        def loss_fn(trainable_part):
            return self.loss(trainable.merge(trainable_part, frozen_params), batch, dropout_key)

        # Only the trainable parameters are differentiated: XLA drops the backward pass
        # of whatever feeds nothing trainable (a frozen ViT's, say).
        (loss, token_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable_params)
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable_params)
        params = trainable.merge(optax.apply_updates(trainable_params, updates), frozen_params)
        # No on-device guard against a non-finite step (a select over the whole state
        # costs ~5% of a tiny model's step): the host reads every step's loss before it
        # saves a checkpoint and stops at a NaN/Inf, so a bad state is never saved.
        num_tokens = jnp.maximum(token_loss.num_tokens, 1.0)
        metrics = {"loss": loss, "cross_entropy": token_loss.cross_entropy / num_tokens,
                   "token_accuracy": token_loss.correct / num_tokens, "grad_norm": optax.global_norm(grads),
                   "learning_rate": self.schedule(state["step"]) if self.schedule else jnp.zeros(())}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics
