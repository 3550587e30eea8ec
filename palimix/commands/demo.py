"""`palimix demo`: the whole framework on a laptop CPU in minutes."""

HELP = ("Train a tiny PaLI on palimix_demo (every kind, 100+ languages) or another recipe (--recipe mblip), "
        "evaluate it against trivial baselines, and write TensorBoard logs and an HTML report.")


def configure(parser):
    from palimix.runner.demo import RECIPES, DemoSettings

    d = DemoSettings()
    parser.add_argument("--model_dir", help="run folder (default palimix_runs/demo, or palimix_runs/demo_<recipe> "
                        "for another recipe); an existing run there is resumed")
    parser.add_argument("--recipe", "--model", dest="recipe", default=d.recipe_name, choices=sorted(RECIPES),
                        help=f"what to train (default {d.recipe_name}): "
                        + "; ".join(f"{name}: {r.description}" for name, r in RECIPES.items())
                        + " (--model is the same flag: tiny and tiny_decoder are the models' recipes)")
    parser.add_argument("--steps", type=int, help="training steps of every stage (default: the recipe's, "
                        + ", ".join(f"{name} " + "+".join(str(s.steps) for s in r.stages)
                                    for name, r in RECIPES.items()) + ")")
    parser.add_argument("--batch_size", type=int, help="every stage's (default: the recipe's)")
    parser.add_argument("--learning_rate", type=float, help="every stage's (default: the recipe's)")
    parser.add_argument("--warmup_steps", type=int, help="every stage's (default: the recipe's)")
    parser.add_argument("--eval_examples", type=int, default=d.eval_examples_per_task,
                        help="at most this many validation examples per task (default: all)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--kinds", help="evaluate these kinds (comma-separated), e.g. vqa,ocr (default: those "
                        "the recipe's last stage trains on; every kind for tiny and tiny_decoder)")
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
        model_dir=args.model_dir, recipe_name=args.recipe, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, eval_examples_per_task=args.eval_examples, seed=args.seed,
        progress=not args.no_progress,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else ()))
    details = summary.pop("_details")
    print(format_table(summary))
    print(f"\n{summary['languages']} languages evaluated; {summary['seconds']:.0f} s in all "
          f"(training {details['train_seconds']:.0f} s: "
          + ", ".join(f"{s['name']} {s['steps']} steps at {s['steps_per_s']:.2f} steps/s" for s in details["stages"])
          + ").")
    print(f"trainable: {details['trainable_share']:.2%} of {details['params']:,} parameters "
          f"({details['trainable_params']:,}).")
    print(f"report: {details['report']}\nmetrics: {details['metrics']}\n"
          f"TensorBoard: tensorboard --logdir {details['tensorboard']}")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0
