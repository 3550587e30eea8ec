"""A t5x train step of PaliModel with no image tokens vs t5x's own EncoderDecoderModel.

Same T5 1.1 configuration (palimix's text tower vs t5x.examples.t5.network), same
batch, same Adafactor, both through t5x's Trainer, in one run with the two models
timed in alternating rounds (so machine load affects both alike). PaliModel gets a
text-only batch (no `encoder_images`): what it costs beyond its image tokens.
Goal: ratio = pali_step_s / t5_step_s <= 1.05. Prints a final JSON line.

    python benchmarks/t5x_step.py [--text mt5_small] [--batch 8] [--steps 10]
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np
import seqio
from t5x import adafactor, models, partitioning, trainer as trainer_lib, utils
from t5x.examples.t5 import network

from palimix.models import configs, pali, t5x_model


def _batch(batch_size, inputs_length, targets_length, vocab_size, seed=0):
    rng = np.random.RandomState(seed)
    targets = rng.randint(2, vocab_size, (batch_size, targets_length)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.randint(2, vocab_size, (batch_size, inputs_length)).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": np.ones_like(targets),
    }


def _trainer(model, batch):
    shapes = {k: v.shape for k, v in batch.items()}
    types = {k: v.dtype for k, v in batch.items()}
    partitioner = partitioning.PjitPartitioner(num_partitions=1, logical_axis_rules=t5x_model.pali_logical_axis_rules())
    init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables, shapes, partitioner, types)
    return trainer_lib.Trainer(
        model, init.from_scratch(jax.random.PRNGKey(0)), partitioner, eval_names=[], summary_dir=None,
        train_state_axes=init.train_state_axes, rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-3,
        num_microbatches=None,
    )


def _step_time(trainer, batch):
    jax.block_until_ready(trainer.train_state.params)
    start = time.perf_counter()
    trainer.train(iter([batch]), num_steps=1)
    jax.block_until_ready(trainer.train_state.params)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="mt5_small", help="palimix text size (configs.TEXT_SIZES)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    args = parser.parse_args()

    cfg = configs.get("tiny", text=args.text)  # the ViT is never built: no image input
    text = cfg.text
    t5_config = network.T5Config(
        vocab_size=text.vocab_size, emb_dim=text.emb_dim, num_heads=text.num_heads, head_dim=text.head_dim,
        mlp_dim=text.mlp_dim, num_encoder_layers=text.num_encoder_layers, num_decoder_layers=text.num_decoder_layers,
        mlp_activations=tuple(text.mlp_activations), dtype="float32", dropout_rate=0.0, logits_via_embedding=False,
    )
    vocab = seqio.PassThroughVocabulary(text.vocab_size)
    rules = t5x_model.pali_logical_factor_rules()
    pali_model = t5x_model.PaliModel(pali.Pali(cfg), vocab, vocab, adafactor.Adafactor(logical_factor_rules=rules))
    t5_model = models.EncoderDecoderModel(network.Transformer(t5_config), vocab, vocab,
                                          adafactor.Adafactor(logical_factor_rules=rules))
    batch = _batch(args.batch, args.inputs, args.targets, text.vocab_size)
    trainers = {"pali": _trainer(pali_model, batch), "t5": _trainer(t5_model, batch)}
    times = {name: [] for name in trainers}
    try:
        for name, trainer in trainers.items():  # compile + one warm-up step each
            _step_time(trainer, batch)
            _step_time(trainer, batch)
        for _ in range(args.steps):
            for name, trainer in trainers.items():
                times[name].append(_step_time(trainer, batch))
    finally:
        for trainer in trainers.values():
            trainer.close()
    pali_s, t5_s = statistics.median(times["pali"]), statistics.median(times["t5"])
    print(f"text={args.text} batch={args.batch} inputs={args.inputs} targets={args.targets} "
          f"params: pali={pali.num_params(trainers['pali'].train_state.params)} "
          f"t5={pali.num_params(trainers['t5'].train_state.params)}")
    print(json.dumps({"pali_step_s": round(pali_s, 4), "t5_step_s": round(t5_s, 4), "ratio": round(pali_s / t5_s, 3)}))


if __name__ == "__main__":
    main()
