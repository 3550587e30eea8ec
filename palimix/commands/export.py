"""`palimix export`: write a trained run in another form (today: LoRA merged)."""

HELP = "Write a `palimix train` run with its LoRA adapters merged into the weights: --merge_lora RUN_DIR OUT_DIR."


def configure(parser):
    parser.add_argument("--merge_lora", nargs=2, metavar=("RUN_DIR", "OUT_DIR"), required=True,
                        help="the run's model dir (or one checkpoints/<step> folder) and a new model dir for "
                             "the merged checkpoint (LoRA off in its run.json; same logits)")
    parser.add_argument("--step", type=int, help="the checkpoint step to export (default: the latest)")


def run(args) -> int:
    from palimix.runner import export

    run_dir, out_dir = args.merge_lora
    export.merge_lora(run_dir, out_dir, step=args.step)
    print(f"merged LoRA adapters of {run_dir} into {out_dir}")
    return 0
