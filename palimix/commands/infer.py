"""`palimix infer`: predictions for images and prompts from a trained run."""

HELP = "Predict with a `palimix train` run: --image PATH --prompt \"caption de\", or --jsonl FILE."


def configure(parser):
    from palimix.runner.config import add_common_flags

    parser.add_argument("--model_dir", required=True,
                        help="the run's model dir (latest checkpoint) or one checkpoints/<step> folder")
    parser.add_argument("--step", type=int)
    parser.add_argument("--image", help="image file (omit for a language-only prompt)")
    parser.add_argument("--prompt", help="the model input as written, e.g. \"caption de\" or "
                        "\"answer fr what colour is the circle?\"")
    parser.add_argument("--kind", help="build the prompt for this kind (caption, vqa, ocr, ...) ...")
    parser.add_argument("--language", help="... in this language (with --kind)")
    parser.add_argument("--question", help="the question, for --kind vqa")
    parser.add_argument("--jsonl", help="requests, one JSON object per line: {\"image\": PATH, \"prompt\": TEXT}")
    parser.add_argument("--output", help="write predictions as JSON lines here (default: print them)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--decode", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--num_beams", type=int, default=4)
    add_common_flags(parser)


def run(args) -> int:
    import json

    from palimix.errors import UsageError
    from palimix.runner import config as config_lib
    from palimix.runner import infer, loading

    if bool(args.jsonl) == bool(args.prompt or args.kind or args.image):
        raise UsageError("give either --jsonl FILE, or --prompt (or --kind/--language) with an optional --image.")
    config_lib.import_modules(args.module)
    config_lib.enable_compilation_cache()
    config_lib.parse_gin(args.gin_file, args.gin_bindings)
    if args.jsonl:
        requests = infer.read_jsonl(args.jsonl)
    else:
        fields = {"question": args.question} if args.question else {}
        prompt = infer.build_prompt(args.prompt, args.kind, args.language, **fields)
        requests = [infer.Request(prompt=prompt, image=args.image, id="1")]
    run_ = loading.load_run(args.model_dir, step=args.step, batch_size=min(args.batch_size, len(requests)))
    predictions = infer.predict(run_, requests, batch_size=args.batch_size, method=args.decode,
                                num_beams=args.num_beams, strict=not args.jsonl)
    if args.output:
        infer.write_jsonl(predictions, args.output)
        print(f"{len(predictions)} predictions written to {args.output}")
    elif len(predictions) == 1 and not args.jsonl:
        print(predictions[0].prediction)
    else:
        for p in predictions:
            print(json.dumps(p.to_json(), ensure_ascii=False))
    return 1 if any(p.error for p in predictions) and not args.output else 0
