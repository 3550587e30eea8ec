"""`palimix train`: the embedded single-machine trainer (no T5X needed)."""

HELP = "Train the palimix model on a task or mixture on this machine (resumes from --model_dir)."

# Parsed before the user's gin files (see build_config).
NETWORK_GIN = "models/network.gin"

# flag -> TrainConfig field (None defaults: gin or the config's default decides).
_FLAGS = {
    "model_dir": "model_dir", "model": "model", "steps": "train_steps", "batch_size": "batch_size",
    "optimizer": "optimizer", "learning_rate": "learning_rate", "schedule": "schedule",
    "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
    "clip_gradient_norm": "clip_gradient_norm", "seed": "seed", "split": "split",
    "checkpoint_every": "checkpoint_every", "keep_checkpoints": "keep_checkpoints",
    "log_every": "log_every", "input_mode": "input_mode", "memory_passes": "memory_passes",
    "init_checkpoint": "init_checkpoint", "init_format": "init_format",
}


def configure(parser):
    from palimix.runner.config import add_common_flags

    parser.add_argument("mixture_or_task", nargs="?", help="registered task or mixture (default: "
                        "gin's MIXTURE_OR_TASK_NAME, else palimix_demo)")
    parser.add_argument("--model_dir", help="where checkpoints, summaries and metrics go; a run "
                        "there is resumed")
    parser.add_argument("--model", help="model config name (palimix.models.configs; default: gin's "
                        "configs.get.name, i.e. MODEL_SIZE of a sizes/*.gin file, else tiny)")
    parser.add_argument("--trainable", action="append", metavar="REGEX",
                        help="train only parameters whose name (e.g. img_proj/kernel) fully matches one of "
                             "these; repeatable (default: gin's ParamSelection.trainable, else all)")
    parser.add_argument("--frozen", action="append", metavar="REGEX",
                        help="freeze parameters whose name fully matches, e.g. 'img/.*' for the ViT; "
                             "repeatable (default: gin's ParamSelection.frozen)")
    parser.add_argument("--steps", type=int, help="train until this step")
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--lengths", help="task feature lengths, e.g. inputs=32,targets=16,image=64")
    parser.add_argument("--optimizer", choices=["adafactor", "adamw", "sgd"])
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--schedule", choices=["rsqrt", "cosine", "linear", "constant"])
    parser.add_argument("--warmup_steps", type=int)
    parser.add_argument("--weight_decay", type=float)
    parser.add_argument("--clip_gradient_norm", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--split", help="dataset split to train on (default train)")
    parser.add_argument("--checkpoint_every", type=int)
    parser.add_argument("--keep_checkpoints", type=int, help="keep the last N checkpoints")
    parser.add_argument("--log_every", type=int)
    parser.add_argument("--input_mode", choices=["auto", "memory", "stream"],
                        help="memory: preprocess the split once and sample batches from memory; stream: "
                             "seqio's tf.data pipeline; auto (default): memory when it fits --memory_limit_mb")
    parser.add_argument("--memory_passes", type=int,
                        help="memory input: epochs of random preprocessing to keep (default 2)")
    parser.add_argument("--init_checkpoint", metavar="PATH",
                        help="start a new run from the parameters of this public checkpoint, loaded before step 0 "
                             "(needs --init_format); recorded in run.json: resume with the same flags")
    parser.add_argument("--init_format", metavar="FORMAT",
                        help="the format of --init_checkpoint: paligemma (big_vision .npz, every parameter), "
                             "gemma (its language model; the ViT as initialised), vit (big_vision ViT .npz), "
                             "mt5 (t5x checkpoint, the text side), qformer (BLIP-2/mBLIP), palimix (another run's --model_dir: "
                             "every parameter, new LoRA adapters fresh, int8/float LM converted); see palimix.models.checkpoints."
                             "WARM_START_FORMATS")
    parser.add_argument("--mesh", help="device mesh as axis=size pairs, e.g. data=2,model=4 (model: "
                        "tensor parallelism by the model's logical axis rules); default: every device "
                        "data parallel (gin: TrainConfig.mesh)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar or log lines")
    add_common_flags(parser)


def build_config(args):
    """TrainConfig from defaults < gin < flags."""
    import dataclasses

    from palimix.runner import config as config_lib
    from palimix.runner.train import TrainConfig

    config_lib.import_modules(args.module)
    # The network file T5X's models/pali.gin includes, first: a sizes/*.gin file or a
    # binding (MODEL_SIZE, IMAGE_SIZE, DROPOUT_RATE, configs.get.*) then picks the network
    # exactly as it does for t5x.train.
    config_lib.parse_gin([NETWORK_GIN, *args.gin_file], args.gin_bindings)
    config = TrainConfig()  # gin-bound fields applied here
    overrides = {}
    for macro, field in config_lib.T5X_MACROS.items():
        value = config_lib.gin_macro(macro)
        if value is not None:
            overrides[field] = dict(value) if isinstance(value, dict) else value
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    if args.mixture_or_task:
        overrides["mixture_or_task_name"] = args.mixture_or_task
    lengths = config_lib.parse_lengths(args.lengths)
    if lengths:
        overrides["task_feature_lengths"] = lengths
    if args.mesh:
        from palimix.models.partitioning import parse_mesh

        overrides["mesh"] = parse_mesh(args.mesh)
    if args.no_progress:
        overrides["progress"] = False
    if args.trainable or args.frozen:
        overrides["trainable"] = _param_selection(args.trainable, args.frozen)
    return dataclasses.replace(config, **overrides)


def _param_selection(trainable, frozen):
    """Flags over gin: a flag replaces that list of gin's `ParamSelection` bindings."""
    from palimix.models.trainable import ParamSelection
    from palimix.runner.model import gin_bindings

    bound = gin_bindings(ParamSelection)
    return ParamSelection(trainable=trainable or bound.get("trainable", (".*",)),
                          frozen=frozen or bound.get("frozen", ()))


def run(args) -> int:
    from palimix.runner import train

    config = build_config(args)
    from palimix.runner.config import enable_compilation_cache

    enable_compilation_cache()
    result = train.train(config)
    loss = "n/a" if result.last_loss is None else f"{result.last_loss:.4f}"
    print(f"trained {config.mixture_or_task_name} to step {result.step} in {result.seconds:.0f} s "
          f"({result.steps_per_s:.2f} steps/s, input wait {100 * result.input_wait_share:.1f}% of step "
          f"time); last loss {loss}; checkpoints in {config.model_dir}/checkpoints")
    return 0
