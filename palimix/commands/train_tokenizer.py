"""`palimix train-tokenizer TASK_OR_MIXTURE --out DIR`: trains a VQGAN image tokenizer
(`palimix.models.vqgan`) on the images of any registered task or mixture.

The images come from the task pipeline itself (`get_dataset` of the seqio task or
mixture, image decoding, resizing and [-1, 1] scaling included); language-only examples
(`has_image` 0, a blank image) are left out. Training minimizes the L2 reconstruction
plus the quantizer loss with Adam. Reconstruction PSNR is measured on held-out images
(the first `--eval_images` images of the `--eval_split` split, in the seed-fixed order the
task or mixture gives them) before the first step and after the last, and written with
the checkpoint:

    DIR/checkpoints/<step>/     the runner's orbax checkpoint (state: params, opt_state, step,
                                and with the adversarial loss `discriminator`: its params and
                                opt_state; meta: the numbers below)
    DIR/tokenizer.msgpack       the tokenizer's params only, in MaskGIT's layout
                                (`checkpoints.load_vqgan` reads it)
    DIR/tokenizer.json          config, steps, psnr_initial, psnr, eval images, losses (the
                                last step's), loss_settings (weights, networks, start step),
                                seconds_per_step (wall clock, compiling left out)

Optional losses (off by default; `palimix.models.vqgan.LossTerms`):

- `--perceptual_weight W --perceptual_network VGG16 [--perceptual_lin HEADS]`: LPIPS on a
  frozen torchvision VGG16 (`palimix.models.perceptual`; the file converted from PyTorch to
  `.safetensors`/`.npz`, `checkpoints.load_lpips_vgg16`), with LPIPS's linear heads if given.
  A weight without a network is an error: palimix never scores with random features
  unasked (a benchmark that wants them writes a random file in torchvision's layout).
- `--adversarial_weight W [--adversarial_start N] [--adversarial_loss non_saturating|hinge]`:
  MaskGIT's StyleGAN discriminator (`palimix.models.discriminator`, config `--discriminator`,
  by default the one named like `--config`) with its own Adam. Each step after step N
  updates the tokenizer against the discriminator as it is, then the discriminator on the
  real images against that step's reconstructions, in one compiled step; the generator's
  weight is fixed (MaskGIT's 0.1 is a good start), not taming's adaptive weight.
  `--r1_weight W` adds MaskGIT's R1 gradient penalty to the discriminator's loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re

HELP = "Train a VQGAN image tokenizer on the images of a task or mixture; reports held-out PSNR."


def configure(parser):
    from palimix.commands.list_tasks import add_registration_flags

    parser.add_argument("name", metavar="TASK_OR_MIXTURE", help="registered task or mixture whose images to use")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, tokenizer.msgpack, tokenizer.json)")
    parser.add_argument("--config", default="tiny", help="VQGAN config (palimix.models.vqgan.CONFIGS: tiny, maskgit)")
    parser.add_argument("--codebook_size", type=int, help="codes in the codebook (default: the config's)")
    parser.add_argument("--stride", type=int, help="pixels per code, a power of two (default: the config's)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--split", default="train", help="split to train on (default train)")
    parser.add_argument("--eval_split", default="validation", help="held-out split for PSNR (default validation)")
    parser.add_argument("--eval_images", type=int, default=64, help="held-out images to measure PSNR on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=100, help="show the loss every N steps")
    parser.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar or lines")
    losses = parser.add_argument_group("optional losses (off by default)")
    losses.add_argument("--perceptual_weight", metavar="W", type=float, default=0.0,
                        help="weight of the LPIPS loss (taming: 1.0, MaskGIT: 0.1)")
    losses.add_argument("--perceptual_network", metavar="PATH",
                        help="torchvision VGG16 weights (.safetensors or .npz with features.N.weight names)")
    losses.add_argument("--perceptual_lin", metavar="PATH",
                        help="LPIPS's linear heads (lin{k}.model.1.weight; default: all 1, LPIPS's lpips=False)")
    losses.add_argument("--adversarial_weight", metavar="W", type=float, default=0.0,
                        help="weight of the generator's adversarial loss (MaskGIT: 0.1)")
    losses.add_argument("--adversarial_start", metavar="N", type=int, default=0,
                        help="steps before the adversarial loss (and the discriminator's training) begins")
    losses.add_argument("--adversarial_loss", metavar="NAME", default="non_saturating",
                        help="non_saturating (MaskGIT's) or hinge (taming's)")
    losses.add_argument("--discriminator", metavar="CONFIG",
                        help="discriminator config (tiny, maskgit; default: the --config name)")
    losses.add_argument("--discriminator_learning_rate", metavar="LR", type=float,
                        help="the discriminator's Adam learning rate (default: --learning_rate)")
    losses.add_argument("--r1_weight", metavar="W", type=float, default=0.0,
                        help="R1 gradient penalty on the discriminator's real images (MaskGIT: 10)")
    add_registration_flags(parser)


@dataclasses.dataclass(frozen=True)
class TokenizerRun:
    name: str
    out: str
    config: str = "tiny"
    codebook_size: int | None = None
    stride: int | None = None
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 1e-3
    split: str = "train"
    eval_split: str = "validation"
    eval_images: int = 64
    seed: int = 0
    log_every: int = 100
    progress: bool = True
    perceptual_weight: float = 0.0
    perceptual_network: str | None = None
    perceptual_lin: str | None = None
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    adversarial_loss: str = "non_saturating"
    discriminator: str | None = None
    discriminator_learning_rate: float | None = None
    r1_weight: float = 0.0


def run(args) -> int:
    from palimix.commands.list_tasks import load_registrations

    load_registrations(args)
    fields = {f.name for f in dataclasses.fields(TokenizerRun)}
    result = train_tokenizer(TokenizerRun(**{k: v for k, v in vars(args).items() if k in fields}))
    print(f"{args.name}: PSNR on {result['eval_images']} held-out images {result['psnr_initial']:.2f} dB "
          f"at step 0 -> {result['psnr']:.2f} dB at step {result['steps']}; written to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------
# Images from the task pipeline.

# seqio's task datasets hold an in-memory cache; an iterator deleted before reading one to
# the end (the endless train stream; the held-out images, taken from the first tasks of a
# mixture) makes tf.data warn (from C++, on fd 2) that the partial cache is dropped, which
# is what we want.
PARTIAL_CACHE_WARNING = re.compile(r"The calling iterator did not fully read the dataset being cached")


@contextlib.contextmanager
def partial_cache_warning_hidden():
    from palimix import quiet

    # SentencePiece's load lines are dropped too: what the block captures bypasses the
    # program-wide filter (palimix.cli) when it is written out again.
    with quiet.native_stderr_without([PARTIAL_CACHE_WARNING, *quiet.SENTENCEPIECE_LOAD_LINES]):
        yield


def image_dataset(name: str, split: str, *, shuffle: bool, num_epochs: int | None, seed: int):
    """The task's or mixture's images ([S, S, 3] float32 in [-1, 1]), blank ones left out."""
    from palimix.runner.data import check_split, get_mixture_or_task

    provider = get_mixture_or_task(name)
    check_split(provider, split)
    ds = provider.get_dataset(sequence_length=None, split=split, shuffle=shuffle, num_epochs=num_epochs,
                              seed=seed, use_cached=False, trim_output_features=False)
    ds = ds.filter(lambda ex: ex["has_image"][0] > 0)
    return ds.map(lambda ex: ex["image"])


def train_batches(run_config: TokenizerRun):
    ds = image_dataset(run_config.name, run_config.split, shuffle=True, num_epochs=None, seed=run_config.seed)
    return ds.batch(run_config.batch_size, drop_remainder=True).as_numpy_iterator()


def held_out_images(run_config: TokenizerRun):
    """[N, S, S, 3]: the first `eval_images` images of the eval split."""
    import numpy as np

    from palimix.errors import UsageError

    ds = image_dataset(run_config.name, run_config.eval_split, shuffle=False, num_epochs=1, seed=run_config.seed)
    with partial_cache_warning_hidden():
        iterator = ds.take(run_config.eval_images).as_numpy_iterator()
        images = list(iterator)
        del iterator, ds  # tf.data warns when the iterator is deleted: inside the block
    if not images:
        raise UsageError(f"{run_config.name} has no images in its {run_config.eval_split!r} split to measure PSNR on.")
    return np.stack(images)


# ----------------------------------------------------------------------------------------
# Training.


def tokenizer_config(run_config: TokenizerRun, image_size: int):
    from palimix.models import vqgan

    overrides = {k: getattr(run_config, k) for k in ("codebook_size", "stride") if getattr(run_config, k)}
    return vqgan.config(run_config.config, image_size=image_size, **overrides)


def evaluate_psnr(model, params, images, batch_size: int) -> float:
    """Mean per-image PSNR of encode -> decode over `images`."""
    import jax
    import numpy as np

    from palimix.models import vqgan

    reconstruct = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        total += float(vqgan.psnr(batch, reconstruct(params, batch))) * len(batch)
    return total / len(images)


# ----------------------------------------------------------------------------------------
# The optional losses: their checks, their networks, the train step.


def check_loss_options(run_config: TokenizerRun) -> None:
    """Options that would be ignored or cannot work are errors, before any data is read."""
    from palimix.errors import UsageError
    from palimix.models import discriminator

    if min(run_config.perceptual_weight, run_config.adversarial_weight, run_config.r1_weight) < 0:
        raise UsageError("loss weights cannot be negative.")
    if run_config.perceptual_weight and not run_config.perceptual_network:
        raise UsageError("--perceptual_weight needs --perceptual_network PATH: torchvision's VGG16 converted to "
                         ".safetensors or .npz (palimix.models.perceptual); there are no built-in weights, and "
                         "palimix does not score with random features.")
    if (run_config.perceptual_network or run_config.perceptual_lin) and not run_config.perceptual_weight:
        raise UsageError("--perceptual_network / --perceptual_lin do nothing without --perceptual_weight.")
    if run_config.perceptual_lin and not run_config.perceptual_network:
        raise UsageError("--perceptual_lin (LPIPS's heads) needs --perceptual_network (the VGG16 they sit on).")
    if run_config.adversarial_weight:
        discriminator.adversarial_loss(run_config.adversarial_loss)
        discriminator.config(discriminator_name(run_config))
    elif (run_config.discriminator or run_config.discriminator_learning_rate or run_config.adversarial_start
          or run_config.r1_weight):
        raise UsageError("--discriminator, --discriminator_learning_rate, --adversarial_start and --r1_weight do "
                         "nothing without --adversarial_weight.")


def discriminator_name(run_config: TokenizerRun) -> str:
    return run_config.discriminator or run_config.config


def loss_settings(run_config: TokenizerRun) -> dict:
    """tokenizer.json's record of the losses the tokenizer was trained with."""
    from palimix.models import discriminator

    settings = {"reconstruction": "l2", "perceptual_weight": run_config.perceptual_weight,
                "adversarial_weight": run_config.adversarial_weight}
    if run_config.perceptual_weight:
        settings.update(perceptual_distance="lpips_vgg16",
                        perceptual_network=os.path.abspath(run_config.perceptual_network),
                        perceptual_lin=run_config.perceptual_lin and os.path.abspath(run_config.perceptual_lin))
    if run_config.adversarial_weight:
        name = discriminator_name(run_config)
        settings.update(adversarial_start=run_config.adversarial_start, adversarial_loss=run_config.adversarial_loss,
                        discriminator=name, discriminator_config=dataclasses.asdict(discriminator.config(name)),
                        discriminator_learning_rate=run_config.discriminator_learning_rate or run_config.learning_rate,
                        r1_weight=run_config.r1_weight)
    return settings


def adam(learning_rate: float):
    import optax

    return optax.adam(learning_rate, b1=0.9, b2=0.99)


@dataclasses.dataclass(frozen=True)
class TokenizerLosses:
    """The optional losses of a run: the frozen LPIPS network, and the discriminator with
    its loss and optimizer (None where off)."""

    perceptual_weight: float = 0.0
    lpips: object = None  # perceptual.Lpips
    adversarial_weight: float = 0.0
    discriminator: object = None  # discriminator.Discriminator
    adversarial: object = None  # discriminator.AdversarialLoss
    discriminator_optimizer: object = None
    r1_weight: float = 0.0

    def terms(self, frozen: dict, state: dict, with_adversarial: bool):
        """`vqgan.LossTerms` for one step (inside the compiled step: the networks' params are traced)."""
        import jax

        from palimix.models import vqgan

        perceptual = critic = None
        if self.perceptual_weight:
            lpips_params = jax.lax.stop_gradient(frozen["perceptual"])  # frozen: no gradient, whoever differentiates
            perceptual = lambda a, b: self.lpips.apply({"params": lpips_params}, a, b)  # noqa: E731
        if with_adversarial:
            params = state["discriminator"]["params"]
            critic = lambda x: self.adversarial.generator(self.discriminator.apply({"params": params}, x))  # noqa: E731
        return vqgan.LossTerms(self.perceptual_weight, perceptual,
                               self.adversarial_weight if with_adversarial else 0.0, critic)

    def discriminator_step(self, state: dict, images, reconstructions):
        """One Adam step of the discriminator on real images against `reconstructions`
        -> (its new state, its loss parts)."""
        import jax
        import optax

        from palimix.models import discriminator

        (_, parts), grads = jax.value_and_grad(discriminator.discriminator_loss, argnums=1, has_aux=True)(
            self.discriminator, state["params"], images, reconstructions, self.adversarial, self.r1_weight)
        updates, opt_state = self.discriminator_optimizer.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, parts


def build_losses(run_config: TokenizerRun, image_size: int, rng) -> tuple[TokenizerLosses, dict, dict]:
    """-> (the run's losses, the frozen params {"perceptual": ...}, the discriminator's
    initial state {"params", "opt_state"} or {})."""
    from palimix.models import checkpoints, discriminator, perceptual

    frozen, critic_state, parts = {}, {}, {}
    if run_config.perceptual_weight:
        frozen["perceptual"] = checkpoints.load_lpips_vgg16(run_config.perceptual_network, perceptual.init_params(),
                                                            lin=run_config.perceptual_lin)
        parts.update(perceptual_weight=run_config.perceptual_weight, lpips=perceptual.Lpips())
    if run_config.adversarial_weight:
        cfg = discriminator.config(discriminator_name(run_config))
        optimizer = adam(run_config.discriminator_learning_rate or run_config.learning_rate)
        params = discriminator.init_params(cfg, rng, image_size)
        critic_state = {"params": params, "opt_state": optimizer.init(params)}
        parts.update(adversarial_weight=run_config.adversarial_weight, discriminator=discriminator.Discriminator(cfg),
                     adversarial=discriminator.adversarial_loss(run_config.adversarial_loss),
                     discriminator_optimizer=optimizer, r1_weight=run_config.r1_weight)
    return TokenizerLosses(**parts), frozen, critic_state


def make_train_step(model, optimizer, losses: TokenizerLosses = TokenizerLosses(), *, with_adversarial: bool = False):
    """The compiled step `(state, frozen, images) -> (state, parts)`: the tokenizer's update,
    then (with_adversarial) the discriminator's on the same step's reconstructions."""
    import jax
    import optax

    from palimix.models import vqgan

    def step(state, frozen, images):
        terms = losses.terms(frozen, state, with_adversarial)
        loss_fn = lambda p: vqgan.losses_and_reconstruction(model, p, images, terms)  # noqa: E731
        (loss, (parts, reconstructions)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state)
        if with_adversarial:
            new_state["discriminator"], critic_parts = losses.discriminator_step(state["discriminator"], images,
                                                                                 reconstructions)
            parts.update(critic_parts)
        return new_state, dict(parts, loss=loss)

    return jax.jit(step)


class StepTimer:
    """Wall-clock seconds of the compiled steps, each step function's first call (which
    compiles it) left out; data loading is outside the timed span."""

    def __init__(self):
        self.seconds, self.steps, self._compiled = 0.0, 0, set()

    def record(self, step_fn, outputs, start: float) -> None:
        """One call of `step_fn` begun at `start` (time.perf_counter) that returned `outputs`."""
        import time

        import jax

        jax.block_until_ready(outputs)
        if step_fn in self._compiled:
            self.seconds, self.steps = self.seconds + time.perf_counter() - start, self.steps + 1
        self._compiled.add(step_fn)

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


def train_steps(run_config: TokenizerRun, step_fns, state: dict, frozen: dict):
    """Runs the steps: `step_fns[0]` up to `adversarial_start`, `step_fns[1]` after it.
    -> (state, the last step's loss parts, StepTimer)."""
    import time

    from palimix.runner.progress import Progress

    batches, parts, timer = train_batches(run_config), {}, StepTimer()
    progress = Progress(run_config.steps, 0, run_config.batch_size, enabled=run_config.progress,
                        description="tokenizer")
    start, since = time.perf_counter(), 0  # for the steps/s shown
    for step in range(1, run_config.steps + 1):
        step_fn, images = step_fns[step > run_config.adversarial_start], next(batches)
        began = time.perf_counter()
        state, parts = step_fn(state, frozen, images)
        timer.record(step_fn, parts, began)
        if step % run_config.log_every == 0 or step == run_config.steps:
            loss = float(parts["loss"])
            progress.update(step, loss, (step - since) / max(time.perf_counter() - start, 1e-9))
            start, since = time.perf_counter(), step
    progress.close()
    with partial_cache_warning_hidden():
        del batches
    return state, parts, timer


def train_tokenizer(run_config: TokenizerRun) -> dict:
    """Trains, measures held-out PSNR before and after, writes DIR; returns tokenizer.json's dict."""
    import jax

    from palimix.models import vqgan

    check_loss_options(run_config)
    held_out = held_out_images(run_config)
    cfg = tokenizer_config(run_config, image_size=held_out.shape[1])
    model = vqgan.Vqgan(cfg)
    rng = jax.random.PRNGKey(run_config.seed)
    params = vqgan.init_params(cfg, rng)
    optimizer = adam(run_config.learning_rate)
    losses, frozen, critic_state = build_losses(run_config, held_out.shape[1], jax.random.fold_in(rng, 1))
    state = {"params": params, "opt_state": optimizer.init(params)}
    if critic_state:
        state["discriminator"] = critic_state
    plain = make_train_step(model, optimizer, losses)
    step_fns = (plain, make_train_step(model, optimizer, losses, with_adversarial=True) if critic_state else plain)
    psnr_initial = evaluate_psnr(model, params, held_out, run_config.batch_size)
    state, parts, timer = train_steps(run_config, step_fns, state, frozen)
    result = {
        "name": run_config.name, "config": dataclasses.asdict(cfg), "steps": run_config.steps,
        "eval_split": run_config.eval_split, "eval_images": int(len(held_out)),
        "psnr_initial": psnr_initial, "psnr": evaluate_psnr(model, state["params"], held_out, run_config.batch_size),
        "losses": {k: float(v) for k, v in parts.items()}, "loss_settings": loss_settings(run_config),
        "seconds_per_step": timer.seconds_per_step,  # wall clock on this machine, compiling left out
    }
    write_outputs(run_config.out, state, result)
    return result


def write_outputs(out: str, state: dict, result: dict) -> None:
    """The whole train state (discriminator included) in the checkpoint; only the
    tokenizer's params, in MaskGIT's layout, in tokenizer.msgpack."""
    from flax import serialization

    from palimix import image_tokenizer
    from palimix.runner.checkpoints import Checkpoints

    os.makedirs(out, exist_ok=True)
    store = Checkpoints(out, keep=1)
    try:
        store.save(result["steps"], dict(state, step=result["steps"]), None, meta=result)
    finally:
        store.close()
    with open(os.path.join(out, image_tokenizer.WEIGHTS_FILE), "wb") as f:
        f.write(serialization.to_bytes({"params": state["params"]}))
    with open(os.path.join(out, image_tokenizer.CONFIG_FILE), "w") as f:
        json.dump(result, f, indent=1)
