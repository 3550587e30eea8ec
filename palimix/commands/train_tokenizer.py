"""`palimix train-tokenizer TASK_OR_MIXTURE --out DIR`: trains a VQGAN image tokenizer
(`palimix.models.vqgan`) on the images of any registered task or mixture.

The images come from the task pipeline itself (`get_dataset` of the seqio task or
mixture, image decoding, resizing and [-1, 1] scaling included); language-only examples
(`has_image` 0, a blank image) are left out. Training minimizes the L2 reconstruction
plus the quantizer loss with Adam. Reconstruction PSNR is measured on held-out images
(the first `--eval_images` images of the `--eval_split` split, in the seed-fixed order the
task or mixture gives them) before the first step and after the last, and written with
the checkpoint:

    DIR/checkpoints/<step>/     the runner's orbax checkpoint (state: params, opt_state, step;
                                meta: the numbers below)
    DIR/tokenizer.msgpack       the params in MaskGIT's layout (`checkpoints.load_vqgan` reads it)
    DIR/tokenizer.json          config, steps, psnr_initial, psnr, eval images, losses
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


def make_train_step(model, optimizer):
    import jax
    import optax

    from palimix.models import vqgan

    def step(params, opt_state, images):
        (loss, parts), grads = jax.value_and_grad(lambda p: vqgan.losses(model, p, images), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, dict(parts, loss=loss)

    return jax.jit(step)


def train_steps(run_config: TokenizerRun, step_fn, params, opt_state):
    import time

    from palimix.runner.progress import Progress

    batches, parts = train_batches(run_config), {}
    progress = Progress(run_config.steps, 0, run_config.batch_size, enabled=run_config.progress,
                        description="tokenizer")
    start, since = time.perf_counter(), 0  # for the steps/s shown, not for any result
    for step in range(1, run_config.steps + 1):
        params, opt_state, parts = step_fn(params, opt_state, next(batches))
        if step % run_config.log_every == 0 or step == run_config.steps:
            loss = float(parts["loss"])
            progress.update(step, loss, (step - since) / max(time.perf_counter() - start, 1e-9))
            start, since = time.perf_counter(), step
    progress.close()
    with partial_cache_warning_hidden():
        del batches
    return params, opt_state, parts


def train_tokenizer(run_config: TokenizerRun) -> dict:
    """Trains, measures held-out PSNR before and after, writes DIR; returns tokenizer.json's dict."""
    import jax
    import optax

    from palimix.models import vqgan

    held_out = held_out_images(run_config)
    cfg = tokenizer_config(run_config, image_size=held_out.shape[1])
    model = vqgan.Vqgan(cfg)
    params = vqgan.init_params(cfg, jax.random.PRNGKey(run_config.seed))
    optimizer = optax.adam(run_config.learning_rate, b1=0.9, b2=0.99)
    opt_state = optimizer.init(params)
    psnr_initial = evaluate_psnr(model, params, held_out, run_config.batch_size)
    params, opt_state, parts = train_steps(run_config, make_train_step(model, optimizer), params, opt_state)
    result = {
        "name": run_config.name, "config": dataclasses.asdict(cfg), "steps": run_config.steps,
        "eval_split": run_config.eval_split, "eval_images": int(len(held_out)),
        "psnr_initial": psnr_initial, "psnr": evaluate_psnr(model, params, held_out, run_config.batch_size),
        "losses": {k: float(v) for k, v in parts.items()},
    }
    write_outputs(run_config.out, params, opt_state, result)
    return result


def write_outputs(out: str, params, opt_state, result: dict) -> None:
    from flax import serialization

    from palimix import image_tokenizer
    from palimix.runner.checkpoints import Checkpoints

    os.makedirs(out, exist_ok=True)
    store = Checkpoints(out, keep=1)
    try:
        store.save(result["steps"], {"params": params, "opt_state": opt_state, "step": result["steps"]},
                   None, meta=result)
    finally:
        store.close()
    with open(os.path.join(out, image_tokenizer.WEIGHTS_FILE), "wb") as f:
        f.write(serialization.to_bytes({"params": params}))
    with open(os.path.join(out, image_tokenizer.CONFIG_FILE), "w") as f:
        json.dump(result, f, indent=1)
