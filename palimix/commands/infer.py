"""`palimix infer`: predictions for images and prompts from a trained run, and images
generated from descriptions (--generate, with an image tokenizer)."""

HELP = ("Predict with a `palimix train` run: --image PATH --prompt \"caption de\", or --jsonl FILE; "
        "--generate \"a red circle\" --tokenizer DIR --out image.png draws an image (with --image PATH "
        "--keep_rows K: completes that image below its top K code rows).")


def configure(parser):
    from palimix.runner.config import add_common_flags

    parser.add_argument("--model_dir", required=True,
                        help="the run's model dir (latest checkpoint) or one checkpoints/<step> folder")
    parser.add_argument("--step", type=int)
    parser.add_argument("--image", help="image file (omit for a language-only prompt; with --generate: the image "
                        "to complete, see --keep_rows)")
    parser.add_argument("--prompt", help="the model input as written, e.g. \"caption de\" or "
                        "\"answer fr what colour is the circle?\"")
    parser.add_argument("--kind", help="build the prompt for this kind (caption, vqa, ocr, ...) ...")
    parser.add_argument("--language", help="... in this language (with --kind; with --generate, default en)")
    parser.add_argument("--question", help="the question, for --kind vqa")
    parser.add_argument("--jsonl", help="requests, one JSON object per line: {\"image\": PATH, \"prompt\": TEXT}; "
                        "with --tokenizer: {\"generate\": DESCRIPTION, \"out\": PNG, \"language\": CODE}")
    parser.add_argument("--output", help="write predictions as JSON lines here (default: print them)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--decode", choices=["greedy", "beam"], default="greedy")
    parser.add_argument("--num_beams", type=int, default=4)
    generation = parser.add_argument_group(
        "image generation", "sample VQGAN codes for a text_to_image prompt and draw them (palimix.runner.generate)")
    generation.add_argument("--generate", metavar="DESCRIPTION", help="the image's description, e.g. \"a red circle\"")
    generation.add_argument("--tokenizer", metavar="DIR", help="the `palimix train-tokenizer` folder whose codes the "
                            "run was trained on")
    generation.add_argument("--out", metavar="PNG", help="where the image goes (with --generate)")
    generation.add_argument("--prompt_style", default="pali", help="the prompt style the run's tasks used "
                            "(pali: \"generate en a red circle\"; natural, instruct, verbatim)")
    generation.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    generation.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--guidance_scale", type=float, help="classifier-free guidance scale S: logits = "
                            "uncond + S * (cond - uncond), uncond from the prompt without its description "
                            "(default: off; 1 = off)")
    generation.add_argument("--num_samples", type=int, default=1, help="images per description (out-1.png, ...)")
    generation.add_argument("--keep_rows", type=int, default=0, metavar="K",
                            help="with --generate and --image: complete the image below its top K code rows "
                            "(the prefix_image prompt; the kept rows are the image's own codes)")
    add_common_flags(parser)


def run(args) -> int:
    from palimix.runner import config as config_lib

    generating = bool(args.generate or args.tokenizer)
    _check_flags(args, generating)
    config_lib.import_modules(args.module)
    config_lib.enable_compilation_cache()
    config_lib.parse_gin(args.gin_file, args.gin_bindings)
    config_lib.gin_macro("MIXTURE_OR_TASK_NAME")  # registers a mixture a gin file defines (runs/davinci.gin)
    return _generate(args) if generating else _predict(args)


def _check_flags(args, generating: bool) -> None:
    from palimix.errors import UsageError

    if not generating:
        if bool(args.jsonl) == bool(args.prompt or args.kind or args.image):
            raise UsageError("give either --jsonl FILE, or --prompt (or --kind/--language) with an optional --image.")
        return
    if not args.tokenizer:
        raise UsageError("--generate draws its codes with an image tokenizer: give --tokenizer DIR "
                         "(a `palimix train-tokenizer` folder).")
    if bool(args.jsonl) == bool(args.generate):
        raise UsageError("with --tokenizer give either --generate DESCRIPTION --out PNG, or --jsonl FILE.")
    if args.generate and not args.out:
        raise UsageError("--generate needs --out PATH.png.")
    if args.prompt or args.kind:
        raise UsageError("--generate builds the text_to_image (or, with --image, prefix_image) prompt itself; "
                         "drop --prompt and --kind.")
    if bool(args.image) != bool(args.keep_rows):
        raise UsageError("prefix completion takes both --image PATH and --keep_rows K (code rows kept from it).")
    if args.image and args.jsonl:
        raise UsageError("with --jsonl, give each request's \"image\" and \"keep_rows\" in the file.")


def _predict(args) -> int:
    import json

    from palimix.runner import infer, loading

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


def _generate(args) -> int:
    import json

    from palimix import image_tokenizer
    from palimix.runner import generate, loading

    if args.jsonl:
        requests = generate.read_requests(args.jsonl)
    else:
        requests = [generate.ImageRequest(args.generate, args.out, language=args.language or "en", id="1",
                                          image=args.image, keep_rows=args.keep_rows)]
    tokenizer = image_tokenizer.load(args.tokenizer)
    samples = len(requests) * args.num_samples
    run_ = loading.load_run(args.model_dir, step=args.step, batch_size=min(args.batch_size, samples))
    images = generate.generate_images(run_, tokenizer, requests, temperature=args.temperature, top_k=args.top_k,
                                      seed=args.seed, guidance_scale=args.guidance_scale,
                                      num_samples=args.num_samples, batch_size=args.batch_size,
                                      prompt_style=args.prompt_style)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(image.to_json(), ensure_ascii=False) + "\n" for image in images)
    grid = tokenizer.grid_size
    for image in images:
        state = "" if image.complete else f", incomplete: {image.codes} of {grid * grid} codes"
        print(f"{image.out}: {image.prompt!r} ({grid}x{grid} codes{state})")
    return 0
