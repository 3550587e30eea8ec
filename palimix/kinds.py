"""The table of task kinds: everything palimix knows about each kind, in one entry.

A kind says how a source record becomes a prompted `(image, prompt) -> target`
example and how its predictions are scored:

| kind | record fields | prompt | target (from references) | metrics | baseline |
|---|---|---|---|---|---|
| caption | captions [n] | caption | sampled (seeded) | cider, bleu, rouge_l | most frequent, per language |
| vqa | question, answers [n] | vqa {question} | most frequent answer | vqa_accuracy | most frequent, per language |
| ocr | text | ocr | the text | anls, exact_match | most frequent, per language |
| classification | label | classification / classification_choices {classes} | the label | accuracy | most frequent, per language |
| translation | text, answers [n] | translation {source} {text} | sampled | bleu, chrf | the source copied |
| span_corruption | text | span_corruption {text} | the masked spans | exact_match | most frequent of the task |
| prefix_lm | text | prefix_lm {text} | the continuation | chrf, bleu | most frequent of the task |
| detection | boxes [n][4], labels [n] | detection {objects} | `<loc>` boxes with labels | detection_f1, detection_map50 | most frequent, per language |
| referring | box [4], expression | referring {expression} | `<loc>` box with the expression | referring_accuracy, mean_iou | most frequent, per language |
| text_to_image | codes [h*w], captions [n] | text_to_image {description} (blank image; an `unconditional_share` without it) | `<img>` + every code | code_accuracy, code_perplexity (a score metric) | most frequent of the task |
| prefix_image | codes [h*w], captions [n] | prefix_image {description} (top k/h of the image) | `<img>` + the codes of rows k.. | code_accuracy, code_perplexity (a score metric) | most frequent of the task |

Readers: `palimix.prompts` (which template kinds exist and their placeholders),
`palimix.preprocessors.prompts.build_example` (fields, references, target, prompt
fields, text preprocessing), `palimix.tasks.registry.add_task` (per-kind options,
whether records carry images, metrics), `palimix.runner.demo` (baselines) and
reports (`primary_metric`). A new kind is a new entry (detection, referring and the
image-generation kinds were added so: palimix.boxes, palimix.image_codes).

This module imports no TensorFlow and no model code: the listing commands and the
prompt module read it; the text preprocessing adapters import TensorFlow when a task
is built.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable

from palimix import languages
from palimix.errors import UsageError, close_matches_hint
from palimix.metrics.anls import anls
from palimix.metrics.bleu import bleu
from palimix.metrics.cider import cider
from palimix.image_codes import image_code_accuracy, image_code_perplexity
from palimix.metrics.detection import detection_f1, detection_map, referring_accuracy
from palimix.metrics.rouge import rouge_l
from palimix.metrics.text import accuracy, chrf, exact_match, sacrebleu_bleu
from palimix.metrics.vqa import vqa_accuracy

# How a kind's target is chosen from its references (preprocessors.prompts implements them).
SAMPLE, MOST_FREQUENT, FIRST = "sample", "most_frequent", "first"
# The option of a kind whose prompt may be dropped for a share of examples (condition
# dropout for classifier-free guidance; preprocessors.prompts._unconditional_prompts).
UNCONDITIONAL_SHARE = "unconditional_share"
# Baselines (runner.demo): the most frequent target of each language / of the whole
# task, or the translation's source text copied unchanged.
MOST_FREQUENT_PER_LANGUAGE, MOST_FREQUENT_OF_TASK, COPY_SOURCE = "most_frequent_per_language", "most_frequent", "copy_source"


@dataclasses.dataclass(frozen=True)
class Metric:
    fn: Callable  # seqio's fn(targets, predictions) -> {key: value}, with `language=` when takes_language;
    # fn(targets, scores) is a score metric (seqio passes each target's log-likelihood).
    takes_language: bool = False


@dataclasses.dataclass(frozen=True)
class Kind:
    """One task kind. `fields`, `references` and `prompt_fields` name record keys;
    `templates` are the prompt template kinds (palimix.prompts) with their placeholders:
    each is filled from a record key (`prompt_fields`) or from an option
    (`prompt_options`; an option given per language as {language: value})."""

    name: str
    fields: tuple[str, ...]  # Record fields it reads (beyond id, language and the image).
    references: str  # The record key holding every acceptable target.
    many_references: bool  # A list (captions, answers) or one string.
    target: str  # SAMPLE, MOST_FREQUENT or FIRST of the references.
    templates: Mapping[str, tuple[str, ...]]  # Template kind -> placeholders the caller fills.
    prompt_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)  # placeholder -> record key.
    prompt_options: Mapping[str, str] = dataclasses.field(default_factory=dict)  # placeholder -> option.
    required_text: tuple[str, ...] = ()  # Record keys that must not be blank (else the example is left out).
    verbatim_references: bool = False  # Keep the reference's spaces (else stripped).
    score_all_references: bool = False  # Metrics score against every reference, not the target.
    images: bool = True  # Whether records carry images by default (else a blank image).
    text_stage: Callable | None = None  # fn(dataset, segmentation, options) run before the prompt.
    image_stage: Callable | None = None  # fn(dataset, options) run after image decoding (real images only).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # add_task options and defaults.
    prepare_options: Callable | None = None  # fn(group, options, source, code or codes) -> options.
    metrics: tuple[Metric, ...] = ()  # Primary metric's function first.
    primary_metric: str = ""  # The key reports show first.
    baseline: str = MOST_FREQUENT_PER_LANGUAGE
    tokensets: tuple[str, ...] = ()  # palimix.vocab tokensets whose tokens must each be one id.

    def template_kind(self, options: Mapping[str, Any]) -> str:
        """The prompt template kind for these options: classification lists its
        classes only when it has some."""
        return "classification_choices" if options.get("classes") else self.name

    def metric_fns(self, language: str) -> list[Callable]:
        """The seqio metric functions for a task of this kind in `language`.

        Raises UnknownLanguageError for an unknown language code."""
        code = languages.normalize(language)
        return [_bind(m.fn, code) if m.takes_language else m.fn for m in self.metrics]


def _bind(fn: Callable, language: str) -> Callable:
    """fn with language bound, as a plain `(targets, predictions)` function that seqio
    accepts (it inspects the positional parameters) and that logs as e.g. `cider_de`."""

    def metric(targets, predictions):
        return fn(targets, predictions, language=language)

    functools.update_wrapper(metric, fn, assigned=("__module__", "__doc__"), updated=())
    metric.__name__ = metric.__qualname__ = f"{fn.__name__}_{language.replace('-', '_')}"
    del metric.__wrapped__  # seqio must see (targets, predictions), not fn's options.
    return metric


# --- per-kind adapters (TensorFlow imported when a task is built) -------------------


def _span_corruption(dataset, segmentation, options):
    from palimix.preprocessors import text

    return text.span_corruption(dataset, segmentation=segmentation, noise_density=options["noise_density"],
                                mean_noise_span_length=options["mean_noise_span_length"])


def _prefix_lm(dataset, segmentation, options):
    from palimix.preprocessors import text

    return text.prefix_lm_split(dataset, segmentation=segmentation, max_target_units=options["max_target_units"])


def _detection_stage(dataset, segmentation, options):
    from palimix import boxes

    return boxes.detection_targets(dataset)


def _referring_stage(dataset, segmentation, options):
    from palimix import boxes

    return boxes.referring_targets(dataset)


def _text_to_image_stage(dataset, segmentation, options):
    from palimix import image_codes

    return image_codes.text_to_image_targets(dataset)


def _prefix_image_stage(dataset, segmentation, options):
    from palimix import image_codes

    return image_codes.prefix_image_targets(dataset)


def _prefix_image_mask(dataset, options):
    from palimix import image_codes

    return image_codes.prefix_image_masked(dataset)


def _translation_options(group, options, source, codes):
    if not options.get("source_language"):
        raise UsageError(f"{group}: translation tasks need source_language= (the language of the records' `text`).")
    return {**options, "source_language": languages.normalize(options["source_language"])}


def _share_options(group, options, source, codes):
    """unconditional_share: a number from 0 to 1."""
    share = options[UNCONDITIONAL_SHARE]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise UsageError(f"{group}: {UNCONDITIONAL_SHARE} must be a number from 0 to 1, got {share!r}.")
    return {**options, UNCONDITIONAL_SHARE: float(share)}


def _classification_options(group, options, source, codes):
    """classes: a list (every language), {language: list}, or True (the source's
    `class_names(language)`) -> {language: list} for each of `codes` (or None)."""
    classes = options.get("classes")
    if classes is None or classes is False:
        return {**options, "classes": None}
    if isinstance(codes, str):
        return {**options, "classes": {codes: _classes_for(group, classes, source, codes)}}
    return {**options, "classes": {code: _classes_for(group, classes, source, code) for code in codes}}


def _classes_for(group, classes, source, code):
    if classes is True:
        if not hasattr(source, "class_names"):
            raise UsageError(f"{group}: classes=True needs a source with class_names(language) (e.g. ImageFolder).")
        return list(source.class_names(code))
    if isinstance(classes, Mapping):
        by_code = {languages.normalize(k): v for k, v in classes.items()}
        if code not in by_code:
            raise UsageError(f"{group}: classes= has no class list for language {code!r}.")
        return list(by_code[code])
    return list(classes)


# --- the table ------------------------------------------------------------------------

_KINDS = (
    Kind("caption", fields=("captions",), references="captions", many_references=True, target=SAMPLE,
         templates={"caption": ()}, score_all_references=True,
         metrics=(Metric(cider, True), Metric(bleu, True), Metric(rouge_l, True)), primary_metric="cider"),
    Kind("vqa", fields=("question", "answers"), references="answers", many_references=True, target=MOST_FREQUENT,
         templates={"vqa": ("question",)}, prompt_fields={"question": "question"}, required_text=("question",),
         score_all_references=True,
         metrics=(Metric(vqa_accuracy),), primary_metric="vqa_accuracy"),
    Kind("ocr", fields=("text",), references="text", many_references=False, target=FIRST, templates={"ocr": ()},
         metrics=(Metric(anls), Metric(exact_match)), primary_metric="anls"),
    Kind("classification", fields=("label",), references="label", many_references=False, target=FIRST,
         # Open-ended ("what is in the image?") or picking from a class list.
         templates={"classification": (), "classification_choices": ("classes",)},
         prompt_options={"classes": "classes"}, options={"classes": None}, prepare_options=_classification_options,
         metrics=(Metric(accuracy),), primary_metric="accuracy"),
    Kind("translation", fields=("text", "answers"), references="answers", many_references=True, target=SAMPLE,
         # The prompt language is the target language; `source` the records' language.
         templates={"translation": ("source", "text")}, prompt_fields={"text": "text"}, required_text=("text",),
         prompt_options={"source": "source_language"}, images=False, options={"source_language": None},
         prepare_options=_translation_options,
         metrics=(Metric(sacrebleu_bleu, True), Metric(chrf, True)), primary_metric="bleu", baseline=COPY_SOURCE),
    # Span corruption and prefix LM targets are made by their text stage (kept verbatim:
    # a leading space before a sentinel is what makes it one token).
    Kind("span_corruption", fields=("text",), references="targets", many_references=False, target=FIRST,
         templates={"span_corruption": ("text",)}, prompt_fields={"text": "noised_text"}, images=False,
         verbatim_references=True,
         text_stage=_span_corruption, options={"noise_density": 0.15, "mean_noise_span_length": 3.0},
         # The targets are the dropped spans: reconstruction is right or wrong.
         metrics=(Metric(exact_match),), primary_metric="exact_match", baseline=MOST_FREQUENT_OF_TASK),
    # prefix_lm takes an image when the source has one (PaLI's split-captioning).
    Kind("prefix_lm", fields=("text",), references="targets", many_references=False, target=FIRST,
         templates={"prefix_lm": ("text",)}, prompt_fields={"text": "prefix"}, verbatim_references=True,
         text_stage=_prefix_lm, options={"max_target_units": None},
         # A continuation has many right answers: score overlap, not identity.
         metrics=(Metric(chrf, True), Metric(sacrebleu_bleu, True)), primary_metric="chrf",
         baseline=MOST_FREQUENT_OF_TASK),
    # PaliGemma's box text (palimix.boxes), made by the text stage from the record's
    # boxes: `targets`, and for detection the classes asked for (`objects`, "cat ; dog").
    # The vocabulary must hold each <loc> token as one id (checked by add_task).
    Kind("detection", fields=("boxes", "labels"), references="targets", many_references=False, target=FIRST,
         templates={"detection": ("objects",)}, prompt_fields={"objects": "objects"},
         text_stage=_detection_stage, tokensets=("loc",),
         metrics=(Metric(detection_f1), Metric(detection_map)), primary_metric="detection_f1"),
    # RefCOCO-style: one box per expression, written as detection writes one object
    # labelled with the expression (what PaliGemma answers to "detect <expression>").
    Kind("referring", fields=("box", "expression"), references="targets", many_references=False, target=FIRST,
         templates={"referring": ("expression",)}, prompt_fields={"expression": "expression"},
         required_text=("expression",), text_stage=_referring_stage, tokensets=("loc",),
         metrics=(Metric(referring_accuracy),), primary_metric="referring_accuracy"),
    # DaVinci's generative objectives (palimix.image_codes): targets are the image's VQGAN
    # codes (the record's `codes`, from `palimix encode-images`) as <img> tokens, which the
    # vocabulary must hold as single ids. text_to_image has no image (blank); prefix_image
    # shows the top k of h code rows of the image and asks for the rest. text_to_image's
    # unconditional_share of examples (a hash of the id) get the prompt without its
    # description, so that classifier-free guidance has an unconditional model to contrast.
    Kind("text_to_image", fields=("codes", "captions"), references="targets", many_references=False, target=FIRST,
         templates={"text_to_image": ("description",)}, prompt_fields={"description": "caption"},
         required_text=("caption",), images=False, text_stage=_text_to_image_stage, tokensets=("img",),
         options={UNCONDITIONAL_SHARE: 0.0}, prepare_options=_share_options,
         metrics=(Metric(image_code_accuracy), Metric(image_code_perplexity)), primary_metric="code_accuracy", baseline=MOST_FREQUENT_OF_TASK),
    Kind("prefix_image", fields=("codes", "captions"), references="targets", many_references=False, target=FIRST,
         templates={"prefix_image": ("description",)}, prompt_fields={"description": "caption"},
         required_text=("caption",), text_stage=_prefix_image_stage, image_stage=_prefix_image_mask,
         tokensets=("img",),
         metrics=(Metric(image_code_accuracy), Metric(image_code_perplexity)), primary_metric="code_accuracy", baseline=MOST_FREQUENT_OF_TASK),
)
KINDS: dict[str, Kind] = {kind.name: kind for kind in _KINDS}
NAMES: tuple[str, ...] = tuple(KINDS)


def get(name: str) -> Kind:
    """The entry of kind `name`; UsageError naming the kinds for an unknown one."""
    if name not in KINDS:
        raise UsageError(f"Unknown task kind {name!r}; kinds: {', '.join(NAMES)}.{close_matches_hint(name, NAMES)}")
    return KINDS[name]


def template_fields() -> dict[str, tuple[str, ...]]:
    """Every prompt template kind (palimix.prompts) -> its placeholders, in table order."""
    return {template: fields for kind in _KINDS for template, fields in kind.templates.items()}


def kind_options(kind: Kind, group: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The kind's options with `given` filled in; UsageError for an option it does not have."""
    unknown = sorted(set(given) - set(kind.options))
    if unknown:
        known = ", ".join(kind.options) or "none"
        raise UsageError(f"{group}: {unknown} {'is not an option' if len(unknown) == 1 else 'are not options'} "
                         f"of {kind.name} tasks (their options: {known}).")
    return {**kind.options, **given}


def check_vocabulary(kind: Kind, vocabulary, group: str) -> None:
    """UsageError unless `vocabulary` encodes every token of the kind's tokensets as one
    id: a <loc> or <img> token spelled as several pieces would make targets long and the
    coordinates or codes unlearnable as classes."""
    if not kind.tokensets:
        return
    from palimix import vocab

    for name in kind.tokensets:
        split = [t for t in vocab.TOKENSETS[name] if len(vocabulary.encode(t)) != 1]
        if split:
            raise UsageError(
                f"{group}: {kind.name} tasks need a vocabulary with the {name!r} tokens as single ids, and "
                f"{getattr(vocabulary, 'sentencepiece_model_file', vocabulary)!r} splits {len(split)} of them "
                f"(e.g. {split[0]}); pass vocabulary=palimix.vocab.default_vocabulary(tokensets=({name!r},)) "
                f"or palimix.vocab.paligemma_vocabulary(...).")
