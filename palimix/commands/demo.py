"""`palimix demo`: the whole framework on a laptop CPU in minutes."""

HELP = ("Train a tiny PaLI on palimix_demo (every kind, 100+ languages), evaluate it against "
        "trivial baselines, and write TensorBoard logs and an HTML report.")


def configure(parser):
    from palimix.runner.demo import RECIPES, DemoSettings

    d = DemoSettings()
    parser.add_argument("--model_dir", default=d.model_dir, help=f"run folder (default {d.model_dir}); "
                        "an existing run there is resumed")
    parser.add_argument("--model", default=d.model, choices=sorted(RECIPES),
                        help=f"the model to train (default {d.model}: the encoder-decoder; tiny_decoder: the "
                        "decoder-only network)")
    parser.add_argument("--steps", type=int, help="training steps (default: the model's recipe, "
                        + ", ".join(f"{name} {r.steps}" for name, r in RECIPES.items()) + ")")
    parser.add_argument("--batch_size", type=int, help="default: the model's recipe")
    parser.add_argument("--learning_rate", type=float, help="default: the model's recipe")
    parser.add_argument("--warmup_steps", type=int, help="default: the model's recipe")
    parser.add_argument("--eval_examples", type=int, default=d.eval_examples_per_task,
                        help="at most this many validation examples per task (default: all)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--kinds", help="evaluate only these kinds (comma-separated), e.g. vqa,ocr")
    parser.add_argument("--json", action="store_true", help="end with one JSON line: kinds, languages, seconds")
    parser.add_argument("--no_progress", action="store_true")


def run(args) -> int:
    import json

    from palimix.errors import UsageError
    from palimix.runner.config import enable_compilation_cache
    from palimix.runner.demo import DemoSettings, format_table, run_demo

    for name in ("steps", "batch_size", "learning_rate", "eval_examples"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}.")
    enable_compilation_cache()
    summary = run_demo(DemoSettings(
        model_dir=args.model_dir, model=args.model, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, eval_examples_per_task=args.eval_examples, seed=args.seed,
        progress=not args.no_progress,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else ()))
    details = summary.pop("_details")
    print(format_table(summary))
    print(f"\n{summary['languages']} languages evaluated; {summary['seconds']:.0f} s in all "
          f"(training {details['train_seconds']:.0f} s at {details['train_steps_per_s']:.2f} steps/s).")
    print(f"report: {details['report']}\nmetrics: {details['metrics']}\n"
          f"TensorBoard: tensorboard --logdir {details['tensorboard']}")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0
