"""`palimix vocab`: the vocabulary, and how it tokenizes a text."""

import json

HELP = "Show the SentencePiece vocabulary (size, path, settings) and a round-trip of a text."

# Shown when no --encode text is given: several scripts, an emoji and a math letter.
DEMO_TEXT = "Grüße! Привет, мир. مرحبا بالعالم. नमस्ते दुनिया। 你好，世界。こんにちは 👋🏽 𝑥²"


def configure(parser):
    parser.add_argument("--encode", metavar="TEXT", help=f"text to tokenize (default: {DEMO_TEXT!r})")
    parser.add_argument("--path", help="a SentencePiece model file instead of palimix's default (e.g. a local copy of mT5's)")
    parser.add_argument("--extra-ids", type=int, default=None, help="extra ids to add (default: 100; 0 for mT5's model)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import dataclasses

    from palimix import vocab

    kwargs = {} if args.extra_ids is None else {"extra_ids": args.extra_ids}
    vocabulary = vocab.load_vocabulary(args.path, **kwargs)
    info = vocab.describe(vocabulary)
    text = DEMO_TEXT if args.encode is None else args.encode
    ids = list(vocabulary.encode(text))
    pieces = [vocabulary.tokenizer.id_to_piece(i) for i in ids]
    decoded = vocabulary.decode(ids)
    result = {
        **dataclasses.asdict(info),
        "text": text,
        "ids": ids,
        "pieces": pieces,
        "decoded": decoded,
        "round_trip": decoded == text,
        "tokens_per_character": round(len(ids) / len(text), 3) if text else 0.0,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
        return 0 if result["round_trip"] else 1
    print(f"vocabulary  {info.path}")
    print(f"size        {info.vocab_size} ids = {info.pieces} pieces + {info.extra_ids} extra ids "
          f"({info.model_type.lower()}, byte fallback {'on' if info.byte_fallback else 'off'}, "
          f"normalization {info.normalization or 'none'})")
    print(f"special     pad={info.pad_id} eos={info.eos_id} unk={info.unk_id}")
    print(f"text        {text}")
    print(f"pieces      {' '.join(pieces)}")
    print(f"ids         {ids}")
    print(f"decoded     {decoded}")
    print(f"round-trip  {'exact' if result['round_trip'] else 'CHANGED'} "
          f"({len(ids)} tokens for {len(text)} characters)")
    return 0 if result["round_trip"] else 1
