"""`palimix convert-checkpoint`: a public checkpoint (big_vision PaliGemma/Gemma/ViT .npz,
t5x mT5) -> a t5x checkpoint of palimix's network, for `t5x.train` to start from.

t5x restores only t5x checkpoints. This builds the network T5X will build (the same gin
files: models/network.gin, a sizes/ file, bindings), loads SRC into it with the loader of
`--format` (palimix.models.checkpoints.WARM_START_FORMATS; strict: what is missing,
mis-shaped or extra is an error), and writes the parameters that format sets, with
t5x's Checkpointer, as OUT_DIR/checkpoint_0 (no optimizer state). Then:

    python -m t5x.train ... --gin_file=models/paligemma.gin --gin_file=runs/pretrain.gin \\
      --gin_file=sizes/tiny_decoder.gin \\
      --gin.INITIAL_CHECKPOINT_PATH="'OUT_DIR/checkpoint_0'" \\
      --gin.utils.RestoreCheckpointConfig.assignment_map="(('state/param_states/.*', None),)"

runs/pretrain.gin restores INITIAL_CHECKPOINT_PATH with mode='specific' and
fallback_to_scratch=True: what the checkpoint lacks (the optimizer state; for gemma, vit
and mt5 the parameters of the other tower) starts fresh. That assignment map
(`checkpoints.T5X_ASSIGNMENT_MAP`) replaces runs/pretrain.gin's default (the mT5 map,
which would skip the image side of a paligemma or vit checkpoint) and drops the
optimizer state, which t5x's fallback then initialises.
"""

HELP = "Convert a big_vision PaliGemma/Gemma/ViT .npz (or an mT5 checkpoint) into a t5x checkpoint to start t5x.train from."



def t5x_restore_bindings(checkpoint_path: str) -> tuple:
    """The gin bindings `t5x.train` (with runs/pretrain.gin) starts from a converted
    checkpoint with."""
    from palimix.models import checkpoints

    return (f"INITIAL_CHECKPOINT_PATH='{checkpoint_path}'",
            f"utils.RestoreCheckpointConfig.assignment_map={checkpoints.T5X_ASSIGNMENT_MAP!r}")


def configure(parser):
    from palimix.runner.config import add_common_flags

    parser.add_argument("source", help="the checkpoint to convert (e.g. pt_224.npz)")
    parser.add_argument("out_dir", help="where the t5x checkpoint goes (OUT_DIR/checkpoint_0)")
    parser.add_argument("--format", required=True,
                        help="the format of SOURCE: paligemma (every parameter), gemma (the language model "
                             "only), vit, mt5; see palimix.models.checkpoints.WARM_START_FORMATS")
    parser.add_argument("--model", help="model config name (default: gin's configs.get.name, i.e. MODEL_SIZE "
                        "of a sizes/*.gin file); pass the gin files and bindings of the T5X run")
    parser.add_argument("--seed", type=int, default=0,
                        help="initialisation seed of the network the checkpoint is loaded into (only shapes "
                             "matter: what is not loaded is not written)")
    add_common_flags(parser)


def convert(source: str, out_dir: str, format: str, definition, seed: int = 0) -> str:
    """Loads `source` into `definition`'s freshly initialised network and writes the part
    `format` sets as a t5x checkpoint; returns its folder."""
    import jax
    from flax import traverse_util

    from palimix.models import checkpoints, networks

    variables = networks.init_variables(definition.config, jax.random.PRNGKey(seed))
    params = checkpoints.warm_start(variables["params"], source, format)
    part = checkpoints.warm_started_part(params, format)
    modules = set(traverse_util.flatten_dict(part))
    axes = {k: v for k, v in variables["params_axes"].items() if k in {m[0] for m in modules}}
    return checkpoints.save_t5x({"params": part, "params_axes": axes}, out_dir)


def run(args) -> int:
    import os

    from palimix.commands.train import NETWORK_GIN
    from palimix.errors import UsageError
    from palimix.models import checkpoints
    from palimix.runner import config as config_lib
    from palimix.runner import model as model_lib

    checkpoints.warm_start_format(args.format)
    if os.path.exists(os.path.join(args.out_dir, "checkpoint_0")):
        raise UsageError(f"{args.out_dir}/checkpoint_0 exists already; pick another OUT_DIR.")
    config_lib.import_modules(args.module)
    # The network file T5X's models/*.gin include, then the run's sizes/ file and bindings.
    config_lib.parse_gin([NETWORK_GIN, *args.gin_file], args.gin_bindings)
    definition = model_lib.from_gin(args.model)
    path = convert(args.source, args.out_dir, args.format, definition, args.seed)
    bindings = " ".join(f'"--gin.{b}"' for b in t5x_restore_bindings(os.path.abspath(path)))
    print(f"wrote {path} ({args.format} parameters of {definition.name}); start t5x.train "
          f"(runs/pretrain.gin) from it with {bindings}")
    return 0
