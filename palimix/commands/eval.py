"""`palimix eval`: evaluate a trained run per task and language, with macro averages."""

HELP = "Evaluate a `palimix train` run: per-task, per-language metrics (JSON) and a table of macro averages."


def configure(parser):
    from palimix.runner.config import add_common_flags

    parser.add_argument("mixture_or_task", nargs="?",
                        help="task or mixture to evaluate (default: the one the run trained on)")
    parser.add_argument("--model_dir", required=True,
                        help="the run's model dir (latest checkpoint) or one checkpoints/<step> folder")
    parser.add_argument("--step", type=int, help="evaluate this checkpoint step (default: latest)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_examples", type=int, help="at most this many examples per task")
    parser.add_argument("--decode", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--output", help="metrics JSON path (default <model_dir>/eval/<split>/metrics.json)")
    parser.add_argument("--per_task", action="store_true", help="print every task (language), not only "
                        "the macro averages per kind")
    parser.add_argument("--json", action="store_true", help="print the metrics JSON instead of tables")
    add_common_flags(parser)


def run(args) -> int:
    import json
    import os
    import shutil

    from palimix.runner import config as config_lib
    from palimix.runner import eval as eval_lib
    from palimix.runner import loading
    from palimix.runner.summaries import Summaries

    config_lib.import_modules(args.module)
    config_lib.enable_compilation_cache()
    config_lib.parse_gin(args.gin_file, args.gin_bindings)
    config_lib.gin_macro("MIXTURE_OR_TASK_NAME")  # registers a mixture a gin file defines (runs/davinci.gin)
    if args.batch_size <= 0:
        from palimix.errors import UsageError

        raise UsageError(f"--batch_size must be positive, got {args.batch_size}.")
    run_ = loading.load_run(args.model_dir, step=args.step, batch_size=args.batch_size)
    summaries = Summaries(run_.model_dir)
    try:
        result = eval_lib.evaluate(run_, args.mixture_or_task, split=args.split, batch_size=args.batch_size,
                                   num_examples=args.num_examples, method=args.decode,
                                   num_beams=args.num_beams, summaries=summaries)
    finally:
        summaries.close()
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        shutil.copyfile(result.output_path, args.output)
    path = args.output or result.output_path
    if args.json:
        with open(path, encoding="utf-8") as f:
            print(json.dumps(json.load(f), ensure_ascii=False))
        return 0
    print(eval_lib.format_table(result, per_task=args.per_task or len(result.tasks) <= 40))
    print(f"\n{len(result.tasks)} tasks, {result.languages} languages, step {result.step}, "
          f"{result.seconds:.0f} s; metrics in {path}")
    return 0
