#!/usr/bin/env python
"""Builds the bundled demo data under palimix/data/demo/ (deterministic; run from the repo root).

    python scripts/build_demo_data.py            # rewrites the generated files
    python scripts/build_demo_data.py --check    # exits 1 if they would change

Inputs:
  - palimix/data/demo/words.tsv: hand-written word tables (colours, shapes, positions,
    questions, caption templates) in 25 languages;
  - gflanguages (PyPI): UDHR and other sample sentences for ~140 palimix languages
    (span corruption and prefix-LM text);
  - babel (PyPI, CLDR): each word-table language's list pattern ("A, B und C"), for
    the scene sentences the text kinds learn from;
  - OFL Noto fonts from the fontpkg-noto-sans{,-arabic,-devanagari,-thai} packages,
    rendered with Pillow's raqm layout (Arabic joins, Indic and Thai shaping).

Outputs (all under palimix/data/demo/, ~2 MB):
  images/scenes/{train,validation}/*.png   one coloured shape at the left/right/top/bottom
  images/ocr/{train,validation}/*.jpg      a word in one of 6 scripts
  {caption,vqa,classification,detection,ocr,translation,text}.{train,validation}.jsonl
                                           (detection: each scene's shape box, [y_min, x_min,
                                           y_max, x_max] in 0..1, labelled in the language)
  tokenizer/tokenizer.{json,msgpack}       the demo's VQGAN image tokenizer (palimix.image_tokenizer
                                           loads it), trained here on the training scenes
  text_to_image.{train,validation}.jsonl   a caption with the shape's position -> the scene's codes
  build_info.json                          counts, the tokenizer's held-out PSNR, versions

The tokenizer is trained on CPU with a fixed seed and batch order; XLA's CPU arithmetic
is deterministic, so the same library versions (build_info.json "versions") on the same
CPU family rebuild it bit for bit (a different CPU's vector units may round differently).

Validation scenes and OCR renders are separate images from the training ones; the
translation validation phrases and the validation text (UDHR chunks and scene
sentences) are held out of training.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib.metadata
import io
import json
import os
import re
import sys
import unicodedata

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "palimix", "data", "demo")
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # this checkout's palimix
from palimix.metrics import scene as scene_table  # noqa: E402
SIDE = 64  # Stored image side (the demo trains at this size: palimix.tasks.demo.IMAGE_SIZE).
SUPERSAMPLE = 4  # Draw at 4x and downscale: antialiased edges.
# The scenes' palette and geometry: one table, which the scene-faithfulness checker reads too.
COLORS, SHAPES, SHAPE_EXTENTS, POSITIONS = scene_table.COLORS, scene_table.SHAPES, scene_table.SHAPE_EXTENTS, scene_table.POSITIONS
BOX_DECIMALS = 4  # Box coordinates in the files (far finer than the 1024 <loc> bins).
QUESTIONS = {"color": "q_color", "shape": "q_shape", "position": "q_position"}
SCENES_PER_COMBO = {"train": 9, "validation": 2}  # x 48 combos of colour, shape, position.
# Per language and split.
CAPTIONS = {"train": 48, "validation": 8}
VQA_IMAGES = {"train": 24, "validation": 4}  # x 3 questions each.
# Validation: 24 per language, so that a baseline that answers every example of a
# language with its most frequent target is not scored on a handful (the majority
# label of 6 examples of 3 shapes is right ~60% of the time by chance; the first of 8
# distinct boxes is one of them).
CLASSIFICATION = {"train": 24, "validation": 24}
DETECTION = {"train": 48, "validation": 24}  # one labelled box each
OCR_RENDERS = {"train": 6, "validation": 1}  # per word (4 colours + 3 shapes).
# gflanguages chunks per language. 5 training chunks (not more): every language keeps
# training text in its script, but the chunks, which the tiny model does not learn in
# the demo's budget, would otherwise crowd out the scene sentences below.
TEXTS = {"train": 5, "validation": 2}
# Scene sentences per word-table language and split, beside its UDHR chunks. One UDHR
# text per language cannot be learned in the demo's budget (its validation chunks are
# words the model never saw), so span corruption and prefix LM lost to their trivial
# baselines; these sentences are made of the demo's own words (captions, questions,
# answers), and a validation sentence is a new combination of seen pieces.
#   qa: a caption, a colour or shape question and its answer ("a red circle. What
#       color is the shape? red"): 12 captions x 2 questions, SCENE_QA_HELD_OUT of them
#       kept for validation; a masked or continued answer is read off the caption.
#   list: 2 distinct captions in the language's CLDR list pattern ("a red circle and
#       a blue square"): grammar and agreement (132 ordered pairs; 3 captions made
#       some texts longer than the demo's 64 input tokens).
SCENE_QA_HELD_OUT = 4
SCENE_LISTS = {"train": 44, "validation": 4}
# What ends a caption before the question (default ". "): the language's full stop;
# Thai separates sentences with a space.
SENTENCE_ENDS = {"zh": "。", "ja": "。", "hi": "। ", "bn": "। ", "th": " "}
TRANSLATION_HELD_OUT = 3  # caption phrases per target language kept for validation.
# Text to image, per language and split: "a red circle. Where is the shape? left" (the
# caption and the VQA position question with its answer: the caption alone has no
# position) -> the scene's VQGAN codes.
TEXT_TO_IMAGE = {"train": 24, "validation": 4}
# The demo's image tokenizer (palimix.models.vqgan): stride 16, a 4 x 4 grid, so a
# target (<img>, 16 codes, EOS) fits the demo's 32 target tokens; trained on the
# training scenes, PSNR measured on the validation scenes.
TOKENIZER_CONFIG = dict(name="tiny", stride=16, codebook_size=256, filters=8)
# What the tokenizer's bytes depend on (build_info.json records their versions).
TOKENIZER_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")
TOKENIZER_TRAINING = dict(steps=2000, batch_size=32, learning_rate=3e-3, seed=0)
# OCR: languages whose script an installed Noto font covers (6 scripts).
OCR_LANGUAGES = ("en", "de", "fr", "es", "pl", "tr", "vi", "ru", "uk", "el", "ar", "hi", "th")
FONT_PACKAGES = {
    "Latn": "fontpkg_noto_sans", "Cyrl": "fontpkg_noto_sans", "Grek": "fontpkg_noto_sans",
    "Arab": "fontpkg_noto_sans_arabic", "Deva": "fontpkg_noto_sans_devanagari", "Thai": "fontpkg_noto_sans_thai",
}
# Sample-text fields of gflanguages, most useful first.
SAMPLE_FIELDS = ("tester", "styles", "specimen_48", "specimen_36", "specimen_32", "poster_md", "specimen_21", "specimen_16")
MAX_WORDS = 8  # Chunk length for span corruption / prefix LM (space-separated languages).
MAX_CHARS = 16  # ... and for languages written without spaces.


def read_words(path):
    table = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"):
            table.setdefault(row["language"], {})[row["key"]] = row["text"]
    return table


def caption(words, color, shape):
    gender = words.get(f"{shape}@gender", "")
    fields = {
        "color": words.get(f"{color}@{gender}", words[color]),
        "shape": words[shape],
        "art": words.get(f"art@{gender}", words.get("art", "")),
    }
    return words["caption"].format(**fields).strip()


def scene_texts(lang: str, words) -> dict[str, list[str]]:
    """{split: sentences} built from one language's word table (see SCENE_QA_HELD_OUT,
    SCENE_LISTS); seeded by the language, and no validation sentence is a training one."""
    from babel.lists import format_list

    combos = [(color, shape) for color in COLORS for shape in SHAPES]
    captions = [caption(words, color, shape) for color, shape in combos]
    qa = [question_and_answer(lang, words, text, question, answer) for text, (color, shape) in zip(captions, combos)
          for question, answer in (("q_color", color), ("q_shape", shape))]
    held_out = set(stable_rng("text-qa", lang).choice(len(qa), SCENE_QA_HELD_OUT, replace=False).tolist())
    texts = {"validation": [t for i, t in enumerate(qa) if i in held_out],
             "train": [t for i, t in enumerate(qa) if i not in held_out]}
    rng = stable_rng("text-list", lang)
    lists, wanted = [], SCENE_LISTS["validation"] + SCENE_LISTS["train"]
    while len(lists) < wanted:
        picked = rng.choice(len(captions), 2, replace=False)
        text = format_list([captions[i] for i in picked], locale=lang)
        if text not in lists:
            lists.append(text)
    texts["validation"] += lists[:SCENE_LISTS["validation"]]
    texts["train"] += lists[SCENE_LISTS["validation"]:]
    assert not set(texts["validation"]) & set(texts["train"]), lang
    return texts


def question_and_answer(lang: str, words, text: str, question: str, answer: str) -> str:
    """A caption, then a question about it and its answer ("a red circle. What color is the shape? red")."""
    return f"{text}{SENTENCE_ENDS.get(lang, '. ')}{words[question]} {words[answer]}"


def scene_description(lang: str, words, scene: dict) -> str:
    """A text_to_image record's caption: the scene's caption with its position asked and
    answered ("a red circle. Where is the shape? left")."""
    return question_and_answer(lang, words, caption(words, scene["color"], scene["shape"]), "q_position",
                               scene["position"])


def stable_rng(*key) -> np.random.Generator:
    """An rng seeded from a string key: stable across runs, machines and Python versions."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_scene(color, shape, position, rng) -> tuple[Image.Image, list[float]]:
    """The scene and its shape's box [y_min, x_min, y_max, x_max] in 0..1 (the corners
    of the drawn polygon, PaliGemma's order; the downscale keeps relative positions)."""
    big = SIDE * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(205, 246, size=3))
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[position]
    cx = (cx + rng.uniform(-0.06, 0.06)) * big
    cy = (cy + rng.uniform(-0.06, 0.06)) * big
    r = rng.uniform(0.12, 0.17) * big
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLORS[color])
    # Half extents (up, left, down, right) of each shape, in units of r.
    up, left, down, right = SHAPE_EXTENTS[shape]
    corners = [cy - r * up, cx - r * left, cy + r * down, cx + r * right]
    if shape == "circle":
        draw.ellipse([corners[1], corners[0], corners[3], corners[2]], fill=fill)
    elif shape == "square":
        draw.rectangle([corners[1], corners[0], corners[3], corners[2]], fill=fill)
    else:
        draw.polygon([(cx, corners[0]), (corners[1], corners[2]), (corners[3], corners[2])], fill=fill)
    box = [round(min(max(v / big, 0.0), 1.0), BOX_DECIMALS) for v in corners]
    return image.resize((SIDE, SIDE), Image.Resampling.LANCZOS), box


def font_path(script) -> str:
    package = FONT_PACKAGES[script]
    spec = importlib.util.find_spec(package)
    if spec is None:
        sys.exit(f"The font package {package} is not installed (pip install {package.replace('_', '-')}).")
    paths = sorted(p for p in glob.glob(os.path.join(os.path.dirname(spec.origin), "**", "*.ttf"), recursive=True)
                   if "Italic" not in p)
    return paths[0]


def render_text(text, script, rng) -> Image.Image:
    big = SIDE * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(215, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    size = int(big * 0.34)
    while True:  # The largest size at which the word fits the width.
        font = ImageFont.truetype(font_path(script), size, layout_engine=ImageFont.Layout.RAQM)
        try:
            font.set_variation_by_name("SemiBold")
        except (OSError, ValueError):
            pass
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= big * 0.92 or size <= 8:
            break
        size = int(size * 0.9)
    x = (big - (right - left)) / 2 - left
    y = (big - (bottom - top)) / 2 - top + rng.uniform(-0.15, 0.15) * big
    draw.text((x, y), text, font=font, fill=ink)
    return image.resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", optimize=False, compress_level=9)
    else:
        image.save(buffer, format="JPEG", quality=90, optimize=False, subsampling=0)
    return buffer.getvalue()


def chunks(text: str, by_space: bool) -> list[str]:
    """Short pieces of sample text: lines split at sentence ends, then at MAX_WORDS
    words (or MAX_CHARS characters)."""
    pieces = []
    for sentence in re.split(r"(?<=[.!?;।။።։。！？])\s*|\n", text):
        sentence = sentence.strip(" ,;:")
        if not sentence:
            continue
        if by_space:
            words = sentence.split()
            for i in range(0, len(words), MAX_WORDS):
                if len(words[i:i + MAX_WORDS]) >= 3:
                    pieces.append(" ".join(words[i:i + MAX_WORDS]))
        else:
            clusters = graphemes(sentence.replace(" ", ""))
            for i in range(0, len(clusters), MAX_CHARS):
                if len(clusters[i:i + MAX_CHARS]) >= 4:
                    pieces.append("".join(clusters[i:i + MAX_CHARS]))
    return pieces


def graphemes(text: str) -> list[str]:
    """Characters with their combining marks (as palimix.preprocessors.text splits them)."""
    clusters = []
    for char in text:
        if clusters and unicodedata.category(char).startswith("M"):
            clusters[-1] += char
        else:
            clusters.append(char)
    return clusters


def scene_pixels(out, paths) -> np.ndarray:
    """The scenes at `paths` (PNG bytes already in `out`) as float32 [N, 64, 64, 3] in [-1, 1]."""
    return np.stack([np.asarray(Image.open(io.BytesIO(out.files[p])).convert("RGB"), np.float32) / 127.5 - 1.0
                     for p in paths])


def tokenizer_config():
    from palimix.models import vqgan

    settings = dict(TOKENIZER_CONFIG)
    return vqgan.config(settings.pop("name"), image_size=SIDE, **settings)


def train_tokenizer(images, held_out, *, steps, batch_size, learning_rate, seed):
    """The demo tokenizer: `palimix train-tokenizer`'s model, optimizer and step on
    `images` in a seeded batch order. Returns (params, tokenizer.json's dict: held-out
    PSNR at step 0 and at the end, and of the training scenes' mean image)."""
    import dataclasses

    import jax

    from palimix.commands import train_tokenizer as command
    from palimix.models import vqgan

    cfg = tokenizer_config()
    model = vqgan.Vqgan(cfg)
    params = vqgan.init_params(cfg, jax.random.PRNGKey(seed))
    optimizer = command.adam(learning_rate)
    state, step = {"params": params, "opt_state": optimizer.init(params)}, command.make_train_step(model, optimizer)
    psnr_initial = command.evaluate_psnr(model, params, held_out, batch_size)
    rng, parts = stable_rng("tokenizer", seed), {}
    for _ in range(steps):  # the plain losses (L2 + quantizer): no frozen networks
        state, parts = step(state, {}, images[rng.choice(len(images), batch_size, replace=False)])
    params = state["params"]
    mean_image = np.broadcast_to(images.mean(0, keepdims=True), held_out.shape)
    result = {
        "name": "palimix_demo scenes (scripts/build_demo_data.py)", "config": dataclasses.asdict(cfg),
        "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
        "train_images": int(len(images)), "eval_split": "validation", "eval_images": int(len(held_out)),
        "psnr_initial": round(psnr_initial, 4), "psnr": round(command.evaluate_psnr(model, params, held_out, batch_size), 4),
        "psnr_mean_image": round(float(vqgan.psnr(held_out, mean_image)), 4),
        "losses": {k: round(float(v), 6) for k, v in parts.items()},
    }
    return params, result


def tokenizer_files(params, result) -> dict[str, bytes]:
    """tokenizer/ as `palimix train-tokenizer` writes it (less the orbax checkpoint)."""
    from flax import serialization

    from palimix import image_tokenizer

    return {f"tokenizer/{image_tokenizer.WEIGHTS_FILE}": serialization.to_bytes({"params": params}),
            f"tokenizer/{image_tokenizer.CONFIG_FILE}": (json.dumps(result, indent=1, sort_keys=True) + "\n").encode()}


def scene_codes(out, scenes, params) -> dict[str, list[int]]:
    """{image path: its h*w codes, row by row} for every scene of every split."""
    from palimix import image_tokenizer
    from palimix.models import vqgan

    tokenizer = image_tokenizer.ImageTokenizer(vqgan.Vqgan(tokenizer_config()), params)
    codes = {}
    for pool in scenes.values():
        paths = [s["image"] for s in pool]
        for path, grid in zip(paths, tokenizer.encode(scene_pixels(out, paths))):
            codes[path] = grid.reshape(-1).tolist()
    return codes


def check_codes_tell_scenes_apart(scenes, codes) -> None:
    """No two scenes of different attributes share their codes (the demo's faithfulness
    metric finds a target's scene from its codes: palimix.tasks.demo)."""
    seen = {}
    for s in (s for pool in scenes.values() for s in pool):
        attributes = (s["color"], s["shape"], s["position"])
        other = seen.setdefault(tuple(codes[s["image"]]), attributes)
        assert other == attributes, f"the tokenizer gives {s['image']} ({attributes}) the codes of a {other} scene"


def text_to_image_records(split, words, word_languages, pick, codes) -> list[dict]:
    records = []
    for lang in word_languages:
        for i, s in enumerate(pick(split, lang, "text_to_image", TEXT_TO_IMAGE[split])):
            records.append({"id": f"t2i-{lang}-{split}-{i}", "image": s["image"], "language": lang,
                            "captions": [scene_description(lang, words[lang], s)], "codes": codes[s["image"]],
                            "scene": {key: s[key] for key in ("color", "shape", "position")}})
    return records


def build_text_to_image(out, scenes, words, word_languages, pick) -> dict:
    """The tokenizer (trained on the training scenes) and the text_to_image records;
    returns the tokenizer's numbers and the record counts for build_info.json."""
    train_paths = [s["image"] for s in scenes["train"]]
    held_out_paths = [s["image"] for s in scenes["validation"]]
    params, result = train_tokenizer(scene_pixels(out, train_paths), scene_pixels(out, held_out_paths),
                                     **TOKENIZER_TRAINING)
    for path, data in tokenizer_files(params, result).items():
        out.add(path, data)
    codes = scene_codes(out, scenes, params)
    check_codes_tell_scenes_apart(scenes, codes)
    counts = {}
    for split in scenes:
        records = text_to_image_records(split, words, word_languages, pick, codes)
        out.jsonl(f"text_to_image.{split}.jsonl", records)
        counts[f"text_to_image.{split}"] = len(records)
    numbers = {k: result[k] for k in ("psnr_initial", "psnr", "psnr_mean_image", "eval_images")}
    cfg = tokenizer_config()
    return {"counts": counts, "tokenizer": {**numbers, "grid_size": cfg.grid_size, "codebook_size": cfg.codebook_size}}


class Writer:
    """Collects output files in memory; writes (or compares, with --check) at the end."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def add(self, relative: str, data: bytes):
        self.files[relative] = data

    def jsonl(self, relative: str, records):
        """Records interleaved round-robin by language (in order within a language), so
        that the first N examples of a multilingual task span N languages: evaluating
        `--eval_examples N` of a demo task samples many languages, not the first one."""
        by_language: dict[str, list] = {}
        for record in records:
            by_language.setdefault(record.get("language", ""), []).append(record)
        queues = list(by_language.values())
        ordered = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
        self.add(relative, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in ordered).encode())

    def flush(self, check: bool) -> int:
        changed = [p for p, d in self.files.items() if not os.path.exists(os.path.join(ROOT, p))
                   or open(os.path.join(ROOT, p), "rb").read() != d]
        generated = set(self.files)
        stale = [os.path.relpath(p, ROOT) for pattern in ("images/**/*.*", "*.jsonl")
                 for p in glob.glob(os.path.join(ROOT, pattern), recursive=True) if os.path.relpath(p, ROOT) not in generated]
        if check:
            for p in changed + stale:
                print("would change:", p)
            return 1 if changed or stale else 0
        for p in stale:
            os.remove(os.path.join(ROOT, p))
        for p in changed:
            os.makedirs(os.path.dirname(os.path.join(ROOT, p)), exist_ok=True)
            with open(os.path.join(ROOT, p), "wb") as f:
                f.write(self.files[p])
        print(f"{len(changed)} files written, {len(stale)} removed, {len(self.files)} in all, "
              f"{sum(map(len, self.files.values())) / 1e6:.2f} MB")
        return 0


def build(out: Writer):
    from palimix import languages

    words = read_words(os.path.join(ROOT, "words.tsv"))
    word_languages = sorted(words)
    counts = {}

    # Scenes: every (colour, shape, position) SCENES_PER_COMBO[split] times.
    scenes = {}
    for split, per_combo in SCENES_PER_COMBO.items():
        scenes[split] = []
        for color in COLORS:
            for shape in SHAPES:
                for position in POSITIONS:
                    for k in range(per_combo):
                        index = len(scenes[split])
                        path = f"images/scenes/{split}/{index:04d}.png"
                        image, box = draw_scene(color, shape, position, stable_rng(split, index))
                        out.add(path, encode(image, "PNG"))
                        scenes[split].append({"image": path, "color": color, "shape": shape, "position": position,
                                              "box": box})
        order = stable_rng("scene-order", split).permutation(len(scenes[split]))
        scenes[split] = [scenes[split][i] for i in order]

    def pick(split, lang, kind, n):
        """n scenes for one language and kind: a different stretch of the pool for each."""
        pool = scenes[split]
        start = int(stable_rng(split, lang, kind).integers(len(pool)))
        return [pool[(start + i) % len(pool)] for i in range(n)]

    for split in SCENES_PER_COMBO:
        captions, vqa, classification, detection = [], [], [], []
        for lang in word_languages:
            w = words[lang]
            for i, s in enumerate(pick(split, lang, "caption", CAPTIONS[split])):
                captions.append({"id": f"caption-{lang}-{split}-{i}", "image": s["image"], "language": lang,
                                 "captions": [caption(w, s["color"], s["shape"])]})
            for i, s in enumerate(pick(split, lang, "vqa", VQA_IMAGES[split])):
                for field, key in QUESTIONS.items():
                    vqa.append({"id": f"vqa-{lang}-{split}-{i}-{field}", "image": s["image"], "language": lang,
                                "question": w[key], "answers": [w[s[field]]]})
            for i, s in enumerate(pick(split, lang, "classification", CLASSIFICATION[split])):
                classification.append({"id": f"cls-{lang}-{split}-{i}", "image": s["image"], "language": lang,
                                       "label": w[s["shape"]]})
            for i, s in enumerate(pick(split, lang, "detection", DETECTION[split])):
                detection.append({"id": f"det-{lang}-{split}-{i}", "image": s["image"], "language": lang,
                                  "boxes": [s["box"]], "labels": [w[s["shape"]]]})
        out.jsonl(f"caption.{split}.jsonl", captions)
        out.jsonl(f"vqa.{split}.jsonl", vqa)
        out.jsonl(f"classification.{split}.jsonl", classification)
        out.jsonl(f"detection.{split}.jsonl", detection)
        counts.update({f"caption.{split}": len(captions), f"vqa.{split}": len(vqa),
                       f"classification.{split}": len(classification), f"detection.{split}": len(detection)})

    # Text to image: the demo tokenizer, trained here, and each scene's codes.
    text_to_image = build_text_to_image(out, scenes, words, word_languages, pick)
    counts.update(text_to_image["counts"])

    # OCR: the colour and shape words of languages in 6 scripts.
    for split, renders in OCR_RENDERS.items():
        records = []
        for lang in OCR_LANGUAGES:
            script = languages.get(lang).script
            for key in list(COLORS) + list(SHAPES):
                for k in range(renders):
                    text = words[lang][key]
                    path = f"images/ocr/{split}/{lang}_{key}_{k}.jpg"
                    out.add(path, encode(render_text(text, script, stable_rng("ocr", split, lang, key, k)), "JPEG"))
                    records.append({"id": f"ocr-{lang}-{split}-{key}-{k}", "image": path, "language": lang, "text": text})
        out.jsonl(f"ocr.{split}.jsonl", records)
        counts[f"ocr.{split}"] = len(records)

    # Translation from English: single words and caption phrases; some phrases held out.
    translation = {"train": [], "validation": []}
    en = words["en"]
    for lang in word_languages:
        if lang == "en":
            continue
        w = words[lang]
        items = [(key, en[key], w[key]) for key in list(COLORS) + list(SHAPES) + list(POSITIONS)]
        phrases = [(f"{c}-{s}", caption(en, c, s), caption(w, c, s)) for c in COLORS for s in SHAPES]
        held_out = set(stable_rng("translation", lang).choice(len(phrases), TRANSLATION_HELD_OUT, replace=False))
        for i, (key, source, target) in enumerate(phrases):
            split = "validation" if i in held_out else "train"
            translation[split].append({"id": f"tr-en-{lang}-{key}", "language": lang, "text": source, "answers": [target]})
        for key, source, target in items:
            translation["train"].append({"id": f"tr-en-{lang}-{key}", "language": lang, "text": source, "answers": [target]})
    for split, records in translation.items():
        out.jsonl(f"translation.{split}.jsonl", records)
        counts[f"translation.{split}"] = len(records)

    # Text for span corruption and prefix LM: gflanguages sample sentences in every
    # language that has them, and scene sentences in the word-table languages.
    import gflanguages

    samples = gflanguages.LoadLanguages()
    texts = {"train": [], "validation": []}
    for lang in languages.all_languages():
        udhr = {"train": [], "validation": []}
        if lang.sample_text and lang.sample_text in samples:
            sample = samples[lang.sample_text].sample_text
            seen, pieces = set(), []
            for field in SAMPLE_FIELDS:
                for piece in chunks(getattr(sample, field, "") or "", lang.segmentation == "space"):
                    if piece not in seen:
                        seen.add(piece)
                        pieces.append(piece)
            if len(pieces) >= 4:
                n_val = TEXTS["validation"]
                udhr = {"validation": pieces[:n_val], "train": pieces[n_val:n_val + TEXTS["train"]]}
        scenes = scene_texts(lang.code, words[lang.code]) if lang.code in words else {"train": [], "validation": []}
        for split in texts:
            for i, piece in enumerate(udhr[split]):
                texts[split].append({"id": f"text-{lang.code}-{split}-{i}", "language": lang.code, "text": piece})
            for i, sentence in enumerate(scenes[split]):
                texts[split].append({"id": f"text-{lang.code}-{split}-scene-{i}", "language": lang.code,
                                     "text": sentence})
    missing = set(words) - {r["language"] for r in texts["train"]}
    assert not missing, f"word-table languages missing from the languages table: {sorted(missing)}"
    for split, records in texts.items():
        out.jsonl(f"text.{split}.jsonl", records)
        counts[f"text.{split}"] = len(records)

    info = {
        "generated_by": "scripts/build_demo_data.py",
        "image_side": SIDE,
        "counts": counts,
        "word_table_languages": word_languages,
        "ocr_languages": list(OCR_LANGUAGES),
        "text_languages": sorted({r["language"] for r in texts["train"]}),
        "tokenizer": text_to_image["tokenizer"],
        "versions": {p: importlib.metadata.version(p) for p in (
            "gflanguages", "babel", "pillow", "fontpkg-noto-sans", "fontpkg-noto-sans-arabic",
            "fontpkg-noto-sans-devanagari", "fontpkg-noto-sans-thai") + TOKENIZER_LIBRARIES},
    }
    out.add("build_info.json", (json.dumps(info, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated files would change")
    args = parser.parse_args(argv)
    writer = Writer()
    build(writer)
    return writer.flush(args.check)


if __name__ == "__main__":
    sys.exit(main())
