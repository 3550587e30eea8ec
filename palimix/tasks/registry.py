"""`add_task`: one seqio task per language, plus a mixture over them.

    from palimix import sources, tasks
    tasks.add_task(
        "xm3600", kind="caption",
        source=sources.Xm3600("captions.jsonl", "images"),
        languages=languages.codes("xm3600"), image_size=224)
    # -> seqio tasks xm3600_ar, xm3600_bn, ..., and the mixture xm3600

Each task's pipeline: read records (the source) -> one preprocessor,
preprocessors.prompts.build_example: decode the image (or give a blank one to
language-only kinds), build prompt and target, tokenize `inputs` and `targets` and
append EOS, in ONE map, then one filter for bad images and empty targets (every
tf.data stage costs CPU per example). Output features: palimix.features.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import seqio

from palimix import features
from palimix import languages as languages_lib
from palimix.errors import UsageError
from palimix.mixtures import add_mixture, check_new_name
from palimix.preprocessors import prompts as prompt_preprocessors

# Shuffle buffers hold decoded images ([S, S, 3] float32, 600 kB at 224 px): small
# ones for image tasks (record sources shuffle all records before reading images).
IMAGE_SHUFFLE_BUFFER = 64
# The language "code" of a multilingual task (ISO 639-2 "mul": multiple languages).
MULTILINGUAL = "mul"
TEXT_SHUFFLE_BUFFER = 1000


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What palimix knows about a task it registered (for `palimix list/show/stats`)."""

    name: str
    group: str  # The add_task name: the mixture over the group's languages.
    kind: str
    language: str  # The task's language code; "mul" for a multilingual task.
    image_size: int
    prompt_style: str
    images: bool  # Whether examples carry real images (else a blank one).
    source: str  # repr of the source, for listings.
    languages: tuple[str, ...] = ()  # Every language of its examples.
    standard_metrics: bool = True  # metrics=None: the kind's own, chosen per language.

    def __post_init__(self):
        if not self.languages:
            object.__setattr__(self, "languages", (self.language,))


_TASKS: dict[str, TaskInfo] = {}
_GROUPS: dict[str, list[str]] = {}


def task_info(name: str) -> TaskInfo | None:
    """The TaskInfo of a task add_task registered, or None (e.g. a plain seqio task)."""
    return _TASKS.get(name)


def groups() -> dict[str, list[str]]:
    """{add_task name: [its task names]}."""
    return {group: list(names) for group, names in _GROUPS.items()}


def task_name(name: str, language: str) -> str:
    """`<name>_<lang>`, with '-' in the language tag as '_' (zh-Hant -> zh_Hant)."""
    return f"{name}_{language.replace('-', '_')}"


def add_task(
    name: str,
    *,
    kind: str,
    source,
    languages: Sequence[str] | str,
    prompt_style: str = "pali",
    image_size: int = features.DEFAULT_IMAGE_SIZE,
    metrics=None,
    overwrite: bool = False,
    vocabulary: seqio.Vocabulary | None = None,
    images: bool | None = None,
    classes=None,
    source_language: str | None = None,
    strict_images: bool = False,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    max_target_units: int | None = None,
    shuffle_buffer_size: int | None = None,
    rate="examples",
    temperature: float = 1.0,
    max_rate: float | None = None,
    unimax=None,
    per_language: bool = True,
):
    """Registers `<name>_<lang>` for each language and the mixture `<name>` over them.

    Args:
      name: the task group's name (the mixture's name, and the tasks' prefix).
      kind: caption, vqa, ocr, classification, translation, span_corruption, prefix_lm.
      source: a seqio DataSource yielding palimix records (`palimix.sources`): one
        with `for_language(code)` (each task reads its language), a dict
        {language: source}, or any source when `languages` has one language.
      languages: language codes (aliases accepted: "iw" -> "he"), or a group name of
        `palimix.languages.codes` ("mc4", "xm3600").
      prompt_style: "pali" ("caption de") or "natural" (localized sentences).
      image_size: the image side the task resizes to (TASK_FEATURE_LENGTHS["image"]).
      metrics: seqio metric functions; None: the kind's standard metrics
        (`palimix.metrics.metrics_for_kind`); [] for none.
      overwrite: replace tasks and the mixture registered under these names before.
      vocabulary: the text vocabulary; default palimix's.
      images: whether records carry images to decode. Default: yes for caption, vqa,
        ocr, classification and prefix_lm; no (a blank image) for translation and
        span_corruption.
      classes: classification: the labels to list in the prompt: a list (every
        language), {language: list}, or True (the source's `class_names(language)`);
        None asks an open question.
      source_language: translation: the language of the records' `text`.
      strict_images: stop at the first unreadable image instead of dropping it.
      noise_density, mean_noise_span_length: span corruption.
      max_target_units: prefix LM: the most words (characters) in a target.
      shuffle_buffer_size: per task; default 64 for image tasks, 1000 for text.
      rate, temperature, max_rate, unimax: the mixture over the languages
        (palimix.mixtures.add_mixture).
      per_language: False registers ONE multilingual task `<name>_mul` over all
        `languages` (each example prompted in its record's language; records in
        other languages left out) instead of a task per language: far cheaper to
        build for 100+ small languages, at the cost of per-language rates.
    Returns the mixture `<name>`.
    """
    kind = prompt_preprocessors.check_kind(kind)
    codes = _languages(languages)
    images = (kind not in prompt_preprocessors.LANGUAGE_ONLY_KINDS) if images is None else bool(images)
    features.check_image_size(image_size)
    if kind == "translation":
        if not source_language:
            raise UsageError(f"{name}: translation tasks need source_language= (the language of `text`).")
        source_language = languages_lib.normalize(source_language)
    names = {code: task_name(name, code) for code in codes} if per_language else {MULTILINGUAL: task_name(name, MULTILINGUAL)}
    if not per_language and isinstance(source, Mapping):
        raise UsageError(f"{name}: a multilingual task (per_language=False) reads one source, not a dict.")

    # Check every name before registering anything, so an error leaves no half group.
    old = set(_GROUPS.get(name, [])) if overwrite else set()
    for new in [name, *names.values()]:
        if new not in old:
            check_new_name(new, overwrite)
    for stale in old:
        seqio.TaskRegistry.remove(stale)
        _TASKS.pop(stale, None)

    output_features = features.output_features(image_size, vocabulary)
    _check_source_fields(name, kind, source)
    registered = []
    for code, full_name in names.items():
        if code == MULTILINGUAL:
            task_source, task_languages = source, codes
            segmentation = {c: languages_lib.get(c).segmentation for c in codes}
            task_classes = _multilingual_classes(name, classes, source, codes)
        else:
            task_source, task_languages = _source_for(name, source, code, codes), code
            segmentation = languages_lib.get(code).segmentation
            task_classes = _classes_for(name, classes, source, code)
        build = functools.partial(
            prompt_preprocessors.build_example,
            kind=kind,
            language=task_languages,
            style=prompt_style,
            classes=task_classes,
            source_language=source_language,
            segmentation=segmentation,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            max_target_units=max_target_units,
            tokenize=True,  # Tokenizing and EOS in the same map (one tf.data stage, one trace).
            # The image in the same map too: decoded (bad ones dropped and counted), or blank.
            decode_images=images,
            blank_image=not images,
            image_size=image_size,
            strict_images=strict_images,
            task_name=full_name,
        )
        task = _PretrimmedTask(
            full_name,
            source=task_source,
            output_features=output_features,
            preprocessors=[build],
            postprocess_fn=prompt_preprocessors.postprocess_fn(kind),
            metric_fns=list(metrics) if metrics is not None else _standard_metrics(kind, codes if code == MULTILINGUAL else code),
            shuffle_buffer_size=shuffle_buffer_size or (IMAGE_SHUFFLE_BUFFER if images else TEXT_SHUFFLE_BUFFER),
        )
        seqio.TaskRegistry.add_provider(full_name, task)
        _TASKS[full_name] = TaskInfo(full_name, name, kind, code, image_size, prompt_style, images, _describe(task_source),
                                     tuple(codes) if code == MULTILINGUAL else (code,), metrics is None)
        registered.append(full_name)
    _GROUPS[name] = registered
    return add_mixture(name, registered, rate=rate, temperature=temperature, max_rate=max_rate, unimax=unimax,
                       overwrite=overwrite)


class _PretrimmedTask(seqio.Task):
    """A seqio.Task whose preprocessor trims `inputs` and `targets` to the sequence
    length itself (build_example(tokenize=True) trims before appending EOS), so
    seqio's own trimming map, which would slice every feature again, is left out:
    every tf.data stage costs CPU per example (~0.15 ms here)."""

    def _trim_output_features(self, dataset, sequence_length):
        return dataset


def remove(name: str) -> None:
    """Unregisters a group that add_task registered: its tasks and its mixture."""
    for task in _GROUPS.pop(name, []):
        seqio.TaskRegistry.remove(task)
        _TASKS.pop(task, None)
    seqio.MixtureRegistry.remove(name)


def _languages(languages) -> list[str]:
    if isinstance(languages, str):
        if languages in languages_lib.GROUPS:
            return languages_lib.codes(languages)
        languages = [languages]
    codes = [languages_lib.normalize(code) for code in languages]
    if not codes:
        raise UsageError("languages= is empty: name at least one language.")
    duplicates = sorted({c for c in codes if codes.count(c) > 1})
    if duplicates:
        raise UsageError(f"languages= names {duplicates} more than once (after resolving aliases).")
    return codes


def _source_for(name, source, code, codes):
    if isinstance(source, Mapping):
        by_code = {languages_lib.normalize(k): v for k, v in source.items()}
        if code not in by_code:
            raise UsageError(f"{name}: the source dict has no entry for language {code!r}.")
        return by_code[code]
    if hasattr(source, "for_language"):
        return source.for_language(code)
    if len(codes) == 1:
        return source
    raise UsageError(
        f"{name}: {source!r} cannot be split by language (no for_language); pass one language "
        "or a dict {language: source}.")


def _check_source_fields(name, kind, source):
    """Catch a source that lacks the kind's fields at registration, not deep in tf.data."""
    sample = next(iter(source.values())) if isinstance(source, Mapping) else source
    fields = getattr(sample, "fields", None)
    if fields is None:
        return  # A plain seqio DataSource: its records are checked when read.
    missing = [f for f in prompt_preprocessors.REQUIRED_FIELDS[kind] if f not in fields]
    if missing:
        raise UsageError(f"{name}: {kind} tasks need the record fields {list(prompt_preprocessors.REQUIRED_FIELDS[kind])}; "
                         f"{sample!r} yields {list(fields)} (missing {missing}).")


def _classes_for(name, classes, source, code):
    if classes is None or classes is False:
        return None
    if classes is True:
        if not hasattr(source, "class_names"):
            raise UsageError(f"{name}: classes=True needs a source with class_names(language) (e.g. ImageFolder).")
        return list(source.class_names(code))
    if isinstance(classes, Mapping):
        by_code = {languages_lib.normalize(k): v for k, v in classes.items()}
        if code not in by_code:
            raise UsageError(f"{name}: classes= has no class list for language {code!r}.")
        return list(by_code[code])
    return list(classes)


def metric_fns_for_language(task, language: str) -> list:
    """The metric functions that score `task`'s examples of `language`: for a
    multilingual task with standard metrics, that language's own (CIDEr on jieba words
    for Chinese, ...), not the task's one set for all its languages; else the task's."""
    info = task_info(task.name)
    if info is None or not info.standard_metrics or info.language != MULTILINGUAL:
        return list(task.predict_metric_fns)
    from palimix import metrics as metrics_lib

    return list(metrics_lib.metrics_for_kind(info.kind, language))


def _standard_metrics(kind: str, language):
    """The kind's metrics for one language; for a multilingual task, those of its
    first language whose segmentation the others share, else the English ones (a
    multilingual task reports one score over all its languages)."""
    from palimix import metrics as metrics_lib

    if not isinstance(language, str):
        segmentations = {languages_lib.get(c).segmentation for c in language}
        language = language[0] if len(segmentations) == 1 else "en"
    return list(metrics_lib.metrics_for_kind(kind, language))


def _multilingual_classes(name, classes, source, codes):
    if classes is None or classes is False:
        return None
    return {code: _classes_for(name, classes, source, code) for code in codes}


def _describe(source) -> str:
    text = repr(source)
    return text if len(text) <= 120 else text[:117] + "..."
