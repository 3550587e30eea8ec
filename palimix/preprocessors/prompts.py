"""Raw source records -> prompted examples: `inputs`, `targets`, `references` (strings).

One seqio-style preprocessor, `build_example`, turns the kind fields a source yields
(`captions`, `question`/`answers`, `text`, `label`; see `palimix.sources`) into

    inputs      the prompt in the task's language and style (palimix.prompts)
    targets     the text to generate
    references  every acceptable answer, for scoring (caption: all captions; vqa:
                all human answers; other kinds: the target)
    language, kind, id

How each kind picks its target:

| kind | record fields | target | references |
|---|---|---|---|
| caption | captions [n] | one caption, sampled (seeded) | all captions |
| vqa | question, answers [n] | the most frequent answer (first on ties) | all answers |
| ocr | text | the text | [text] |
| classification | label | the label | [label] |
| translation | text, answers [n] (reference translations) | one translation, sampled | all |
| span_corruption | text | the masked spans (see preprocessors.text) | [target] |
| prefix_lm | text | the continuation | [target] |

Examples whose target would be empty (no captions, no answers, empty text) are
dropped: `palimix stats` shows input and output counts per task.

The image can be handled in the same map (`decode_images=True`: decode `image/encoded`
as `palimix.preprocessors.image` does, bad images dropped and counted;
`blank_image=True`: the all-zero image with has_image=0 of language-only kinds), and
then one filter drops bad images and examples without a target together. Every
tf.data stage costs CPU per example (~0.15 ms here for a map or a filter), so a task
is one map and one filter, not a map and a filter per concern.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from palimix import features, prompts
from palimix.errors import UsageError
from palimix.preprocessors import text as text_preprocessors
from palimix.preprocessors.text import _no_autograph

# The record fields each kind reads (beyond id, language and the image).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": ("captions",),
    "vqa": ("question", "answers"),
    "ocr": ("text",),
    "classification": ("label",),
    "translation": ("text", "answers"),
    "span_corruption": ("text",),
    "prefix_lm": ("text",),
}
KINDS = tuple(REQUIRED_FIELDS)
IMAGE_KINDS = ("caption", "vqa", "ocr", "classification")
LANGUAGE_ONLY_KINDS = ("translation", "span_corruption")
# prefix_lm takes an image when the source has one (PaLI's split-captioning); the demo's
# prefix-LM text has none.

# Keys an example keeps after build_example (plus image and has_image).
EXAMPLE_KEYS = ("inputs", "targets", "references", "language", "kind", "id")


def check_kind(kind: str) -> str:
    if kind not in REQUIRED_FIELDS:
        from palimix.errors import close_matches_hint

        raise UsageError(f"Unknown task kind {kind!r}; kinds: {', '.join(KINDS)}.{close_matches_hint(kind, KINDS)}")
    return kind


def most_frequent(values: tf.Tensor) -> tf.Tensor:
    """The most frequent string of a 1-D tensor (the earliest of equally frequent ones);
    "" for none."""
    unique, _, counts = tf.unique_with_counts(_or_blank(values))
    return unique[tf.argmax(counts, output_type=tf.int32)]


def _sample(values: tf.Tensor, seed) -> tf.Tensor:
    """One of `values`, drawn with `seed`; "" for none."""
    values = _or_blank(values)
    index = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.size(values), dtype=tf.int32)
    return values[index]


def _or_blank(values: tf.Tensor) -> tf.Tensor:
    """`values`, or [""] when it is empty (an example the filter drops still needs a
    target inside the map, without a tf.cond per example)."""
    return tf.concat([values, tf.fill(tf.cast(tf.equal(tf.size(values), 0), tf.int32)[None], "")], 0)


def _as_list(value) -> tf.Tensor:
    """A ragged row (RaggedTensor of rank 1) or dense 1-D tensor -> dense 1-D strings, empties removed."""
    if isinstance(value, tf.RaggedTensor):
        value = value.to_tensor()
    value = tf.reshape(value, [-1])
    return tf.boolean_mask(value, tf.strings.length(tf.strings.strip(value)) > 0)


_MARK = "\ue000"  # Private-use character: marks where a per-example field goes.


def _prompt_builder(kind: str, codes: Sequence[str], style: str, static_fields, dynamic_fields: Sequence[str]):
    """fn(example, {field: tensor}) -> the prompt tensor, for one language or several.

    With several languages, each language's template is rendered once with markers
    for the per-example fields; the literal pieces between them become lookup tables
    indexed by the example's language."""
    if len(codes) == 1:
        code = codes[0]
        if dynamic_fields:
            return lambda example, values: prompts.prompt_tf(kind, code, style=style, **static_fields(code), **values)
        text = prompts.prompt(kind, code, style=style, **static_fields(code))
        return lambda example, values: tf.constant(text)
    pieces = []
    for code in codes:
        marked = prompts.prompt(kind, code, style=style, **static_fields(code),
                                **{f: f"{_MARK}{f}{_MARK}" for f in dynamic_fields})
        pieces.append(marked.split(_MARK))
    order = {tuple(p[1::2]) for p in pieces}
    if len(order) != 1:
        raise UsageError(f"the {style} {kind} templates of {list(codes)} place their fields differently; "
                         "register one task per language (per_language=True).")
    fields = order.pop()
    literals = [tf.constant([p[0::2][i] for p in pieces]) for i in range(len(fields) + 1)]
    codes_tensor = tf.constant(list(codes))

    def build(example, values):
        index = tf.argmax(tf.cast(tf.equal(codes_tensor, example["language"]), tf.int32), output_type=tf.int32)
        parts = [tf.gather(literals[0], index)]
        for i, field in enumerate(fields):
            parts += [values[field], tf.gather(literals[i + 1], index)]
        return tf.strings.join(parts)

    return build


def build_example(
    dataset: tf.data.Dataset,
    *,
    kind: str,
    language,
    style: str = "pali",
    classes=None,
    source_language: str | None = None,
    segmentation="space",
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    max_target_units: int | None = None,
    tokenize: bool = False,
    decode_images: bool = False,
    blank_image: bool = False,
    image_size: int | None = None,
    strict_images: bool = False,
    task_name: str = "",
    output_features=None,
    sequence_length=None,
) -> tf.data.Dataset:
    """Turns records into prompted examples of `kind` (see module doc).

    Args:
      kind: one of KINDS.
      language: the normalized code of the prompt and target language; or a list of
        codes for a multilingual task: each example's prompt is in its record's
        `language`, and records in other languages are left out.
      style: prompt style ("pali" or "natural"; see palimix.prompts).
      classes: classification only: the class labels listed in the prompt
        ("classify de Kreis ; Quadrat ; Dreieck"): a list, or {language: list};
        None asks an open question.
      source_language: translation only: the language of `text`.
      segmentation: "space" or other (characters): the units that span corruption
        and prefix LM count (palimix.languages' `segmentation`); {language: name}
        for a multilingual task.
      noise_density, mean_noise_span_length: span corruption (T5 defaults).
      max_target_units: prefix LM: at most this many units in the target.
      tokenize: also tokenize `inputs` and `targets` and append EOS after trimming
        to `sequence_length` (`text.tokenize_and_append_eos`), in the same map: one
        tf.data stage and one traced function instead of three. seqio passes
        `output_features` and `sequence_length`.
      decode_images: decode each record's `image/encoded` to `image`/`has_image` in
        the same map (`image.ImageDecoder`: `image_size`, `strict_images`; bad images
        are dropped and counted under `task_name`).
      blank_image: give each example the all-zero `image_size` image, has_image 0
        (language-only kinds; no file is read).
    """
    check_kind(kind)
    if (decode_images or blank_image) and not image_size:
        raise UsageError("build_example(decode_images=/blank_image=True) needs image_size.")
    if tokenize and output_features is None:
        raise UsageError("build_example(tokenize=True) needs output_features (seqio passes them to preprocessors).")
    finish = text_preprocessors.tokenize_and_append_eos_fn(output_features, sequence_length) if tokenize else None
    if kind == "translation" and not source_language:
        raise UsageError("translation tasks need source_language= (the language of the records' `text`).")
    codes = [language] if isinstance(language, str) else list(language)
    multilingual = len(codes) > 1
    if multilingual:
        codes_tensor = tf.constant(codes)
        dataset = dataset.filter(_no_autograph(lambda ex: tf.reduce_any(tf.equal(ex["language"], codes_tensor))))

    decoder, image_keys = None, ()
    if decode_images:
        # Imported here: the image module pulls in Pillow, not needed to list tasks.
        from palimix.preprocessors import image as image_preprocessors

        decoder = image_preprocessors.ImageDecoder(image_size=image_size, strict=strict_images, task_name=task_name)
        image_keys = decoder.KEYS  # What the decoder's `finish` reads after this map.
    # With an image step here, drops are marked in the map (has_image DROPPED) and
    # filtered once after it; otherwise examples without a target are filtered first.
    marks_drops = decode_images or blank_image

    if kind == "span_corruption":
        dataset = text_preprocessors.span_corruption(
            dataset, segmentation=segmentation, noise_density=noise_density, mean_noise_span_length=mean_noise_span_length
        )
    elif kind == "prefix_lm":
        dataset = text_preprocessors.prefix_lm_split(dataset, segmentation=segmentation, max_target_units=max_target_units)

    def classes_of(code):
        return list(classes[code]) if isinstance(classes, Mapping) else list(classes)

    prompt_kind, static, dynamic, field_of = kind, (lambda code: {}), (), {}
    if kind == "vqa":
        dynamic, field_of = ("question",), {"question": "question"}
    elif kind == "classification":
        if classes:
            prompt_kind, static = "classification_choices", (lambda code: {"classes": classes_of(code)})
    elif kind == "translation":
        static = lambda code: {"source": source_language}  # noqa: E731
        dynamic, field_of = ("text",), {"text": "text"}
    elif kind == "span_corruption":
        dynamic, field_of = ("text",), {"text": "noised_text"}
    elif kind == "prefix_lm":
        dynamic, field_of = ("text",), {"text": "prefix"}
    prompt_for = _prompt_builder(prompt_kind, codes, style, static, dynamic)

    @seqio.map_over_dataset(num_seeds=1)
    @_no_autograph
    def build(example, seed):
        if decoder is not None:
            example = decoder.decode(example)
        elif blank_image:
            example = dict(example)
            example["image"] = tf.zeros([image_size, image_size, 3], tf.float32)
            example["has_image"] = tf.constant([0], tf.int32)
        references = references_of(example)
        if kind in ("caption", "translation"):
            target = _sample(references, seed)
        elif kind == "vqa":
            target = most_frequent(references)
        else:
            target = references[0]
        out = {
            "inputs": prompt_for(example, {f: example[key] for f, key in field_of.items()}),
            "targets": target,
            "references": references,
            "language": example["language"] if multilingual else tf.constant(codes[0]),
            "kind": tf.constant(kind),
            "id": tf.strings.as_string(example["id"]) if example["id"].dtype != tf.string else example["id"],
        }
        for key in ("image", "has_image", *image_keys):
            if key in example:
                out[key] = example[key]
        if marks_drops:  # (min: the decoder's end marker, END_OF_DATA, stays as it is.)
            out["has_image"] = tf.where(has_target(example, references), out["has_image"],
                                        tf.minimum(out["has_image"], features.DROPPED))
        return finish(out) if finish else out

    def references_of(example):
        """Every acceptable target of a record (the target is drawn from them)."""
        if kind in ("caption", "translation", "vqa"):
            return _as_list(example["captions" if kind == "caption" else "answers"])
        if kind in ("ocr", "classification"):
            return tf.reshape(tf.strings.strip(example["text" if kind == "ocr" else "label"]), [1])
        # span_corruption, prefix_lm: made by preprocessors.text (kept verbatim: a
        # leading space before a sentinel is what makes it one token).
        return tf.reshape(example["targets"], [1])

    def has_target(example, references):
        if kind in ("caption", "translation", "vqa"):
            ok = tf.size(references) > 0
            if kind in ("vqa", "translation"):
                field = "question" if kind == "vqa" else "text"
                ok = tf.logical_and(ok, tf.strings.length(tf.strings.strip(example[field])) > 0)
            return ok
        return tf.strings.length(tf.strings.strip(references[0])) > 0

    if decoder is not None:
        # Routed right before the map: `finish` counts every example that goes
        # missing between the two as lost, so no filter may stand between them.
        return decoder.finish(build(decoder.route(dataset)))
    if marks_drops:
        return build(dataset).filter(features.is_kept)
    return build(dataset.filter(_no_autograph(lambda example: has_target(example, references_of(example)))))


# Kinds whose metrics score a prediction against a list of references (palimix.metrics).
MULTI_REFERENCE_KINDS = ("caption", "vqa")


def postprocess_fn(kind: str):
    """The seqio `postprocess_fn` for a kind (see `postprocess`)."""
    check_kind(kind)
    return functools.partial(postprocess, multi_reference=kind in MULTI_REFERENCE_KINDS)


def postprocess(output, example=None, is_target: bool = False, multi_reference: bool = False):
    """seqio postprocess_fn: predictions become stripped strings. Targets of caption
    and vqa tasks (`multi_reference`) become their example's `references` (all
    captions, all human answers), which palimix's caption and VQA metrics score
    against; other targets stay the target string."""
    if is_target and multi_reference and example is not None and "references" in example:
        return [_text(r) for r in list(example["references"])]
    output = _text(output)
    return output.strip() if isinstance(output, str) else output


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value
