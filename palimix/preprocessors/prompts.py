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

`add_blank_image` gives language-only examples the all-zero image and has_image=0
without any file decoding (pure TF: cheap, and tf.data can checkpoint it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import seqio
import tensorflow as tf

from palimix import prompts
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


def add_blank_image(dataset: tf.data.Dataset, *, image_size: int) -> tf.data.Dataset:
    """Adds `image` (zeros [S, S, 3]) and `has_image` = 0; drops image/encoded and image/path."""
    size = int(image_size)

    @_no_autograph
    def blank(example):
        example = {k: v for k, v in example.items() if k not in ("image/encoded", "image/path")}
        example["image"] = tf.zeros([size, size, 3], tf.float32)
        example["has_image"] = tf.constant(0, tf.int32)
        return example

    return dataset.map(blank, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def most_frequent(values: tf.Tensor) -> tf.Tensor:
    """The most frequent string of a 1-D tensor (the earliest of equally frequent ones)."""
    unique, _, counts = tf.unique_with_counts(values)
    return unique[tf.argmax(counts, output_type=tf.int32)]


def _sample(values: tf.Tensor, seed) -> tf.Tensor:
    index = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.size(values), dtype=tf.int32)
    return values[index]


def _as_list(value) -> tf.Tensor:
    """A ragged row (RaggedTensor of rank 1) or dense 1-D tensor -> dense 1-D strings, empties removed."""
    if isinstance(value, tf.RaggedTensor):
        value = value.to_tensor()
    value = tf.reshape(value, [-1])
    return tf.boolean_mask(value, tf.strings.length(tf.strings.strip(value)) > 0)


def build_example(
    dataset: tf.data.Dataset,
    *,
    kind: str,
    language: str,
    style: str = "pali",
    classes: Sequence[str] | None = None,
    source_language: str | None = None,
    segmentation: str = "space",
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    max_target_units: int | None = None,
) -> tf.data.Dataset:
    """Turns records of one language into prompted examples of `kind` (see module doc).

    Args:
      kind: one of KINDS.
      language: the normalized code of the prompt and target language.
      style: prompt style ("pali" or "natural"; see palimix.prompts).
      classes: classification only: the class labels (in `language`) listed in the
        prompt ("classify de Kreis ; Quadrat ; Dreieck"); None: an open prompt.
      source_language: translation only: the language of `text`.
      segmentation: "space" or other (characters): the units that span corruption
        and prefix LM count (palimix.languages' `segmentation`).
      noise_density, mean_noise_span_length: span corruption (T5 defaults).
      max_target_units: prefix LM: at most this many units in the target.
    """
    check_kind(kind)
    if kind == "translation" and not source_language:
        raise UsageError("translation tasks need source_language= (the language of the records' `text`).")

    if kind == "span_corruption":
        dataset = text_preprocessors.span_corruption(
            dataset, segmentation=segmentation, noise_density=noise_density, mean_noise_span_length=mean_noise_span_length
        )
    elif kind == "prefix_lm":
        dataset = text_preprocessors.prefix_lm_split(dataset, segmentation=segmentation, max_target_units=max_target_units)

    def prompt_for(example):
        if kind == "vqa":
            return prompts.prompt_tf("vqa", language, style=style, question=example["question"])
        if kind == "classification":
            if classes:
                return tf.constant(prompts.prompt("classification_choices", language, style=style, classes=list(classes)))
            return tf.constant(prompts.prompt("classification", language, style=style))
        if kind == "translation":
            return prompts.prompt_tf("translation", language, style=style, source=source_language, text=example["text"])
        if kind == "span_corruption":
            return prompts.prompt_tf("span_corruption", language, style=style, text=example["noised_text"])
        if kind == "prefix_lm":
            return prompts.prompt_tf("prefix_lm", language, style=style, text=example["prefix"])
        return tf.constant(prompts.prompt(kind, language, style=style))

    @seqio.map_over_dataset(num_seeds=1)
    @_no_autograph
    def build(example, seed):
        if kind == "caption":
            references = _as_list(example["captions"])
            target = _sample(references, seed)
        elif kind == "translation":
            references = _as_list(example["answers"])
            target = _sample(references, seed)
        elif kind == "vqa":
            references = _as_list(example["answers"])
            target = most_frequent(references)
        elif kind in ("ocr", "classification"):
            target = tf.strings.strip(example["text" if kind == "ocr" else "label"])
            references = tf.reshape(target, [1])
        else:  # span_corruption, prefix_lm: made by preprocessors.text (kept verbatim:
            # a leading space before a sentinel is what makes it one token).
            target = example["targets"]
            references = tf.reshape(target, [1])
        out = {
            "inputs": prompt_for(example),
            "targets": target,
            "references": references,
            "language": tf.constant(language),
            "kind": tf.constant(kind),
            "id": tf.strings.as_string(example["id"]) if example["id"].dtype != tf.string else example["id"],
        }
        for key in ("image", "has_image"):
            if key in example:
                out[key] = example[key]
        return out

    @_no_autograph
    def has_target(example):
        if kind in ("caption", "translation", "vqa"):
            ok = tf.size(_as_list(example["captions" if kind == "caption" else "answers"])) > 0
            if kind in ("vqa", "translation"):
                field = "question" if kind == "vqa" else "text"
                ok = tf.logical_and(ok, tf.strings.length(tf.strings.strip(example[field])) > 0)
            return ok
        if kind in ("ocr", "classification"):
            return tf.strings.length(tf.strings.strip(example["text" if kind == "ocr" else "label"])) > 0
        return tf.strings.length(tf.strings.strip(example["targets"])) > 0

    return build(dataset.filter(has_target))


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
