"""`add_task`: one seqio task per language, plus a mixture over them.

    from palimix import sources, tasks
    tasks.add_task(
        "xm3600", kind="caption",
        source=sources.Xm3600("captions.jsonl", "images"),
        languages=languages.codes("xm3600"), image_size=224)
    # -> seqio tasks xm3600_ar, xm3600_bn, ..., and the mixture xm3600

Each task's pipeline: read records (the source) -> one preprocessor,
preprocessors.prompts.build_example: decode the image (or give a blank one to
language-only kinds), build prompt and target as the kind's entry in palimix.kinds
says, tokenize `inputs` and `targets` and append EOS in ONE map, then one filter for
bad images and empty targets (every tf.data stage costs CPU per example). Output
features: palimix.features. A multilingual task (per_language=False) reports its
metrics per language (palimix.metrics.per_language).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import seqio

from palimix import features, kinds
from palimix import languages as languages_lib
from palimix.errors import UsageError
from palimix.metrics import per_language
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
    english_answer_share: float = 0.0  # Share of non-English examples asked for an English answer.

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
    strict_images: bool = False,
    shuffle_buffer_size: int | None = None,
    per_language: bool = True,
    rate="examples",
    temperature: float = 1.0,
    max_rate: float | None = None,
    unimax=None,
    english_answer_share: float = 0.0,
    answer_language: str | None = None,
    **options,
):
    """Registers `<name>_<lang>` for each language and the mixture `<name>` over them.

    Every task is built and checked before anything is registered, so an error
    (a bad option, a source without a language, a name in use) leaves the registry
    as it was; with `overwrite`, the group it replaces stays until the new one is in.

    Args:
      name: the task group's name (the mixture's name, and the tasks' prefix).
      kind: a kind of `palimix.kinds` (caption, vqa, ocr, classification,
        translation, span_corruption, prefix_lm, detection, referring).
      source: a seqio DataSource yielding palimix records (`palimix.sources`): one
        with `for_language(code)` (each task reads its language), a dict
        {language: source}, or any source when `languages` has one language.
      languages: language codes (aliases accepted: "iw" -> "he"), or a group name of
        `palimix.languages.codes` ("mc4", "xm3600").
      prompt_style: "pali" ("caption de"), "natural" (localized sentences),
        "instruct" (several mBLIP-style instructions per language, one chosen per
        example by a hash of its language and id) or "verbatim" (the record's
        `question` is the whole prompt: mBLIP's task files); see palimix.prompts.
      image_size: the image side the task resizes to (TASK_FEATURE_LENGTHS["image"]).
      metrics: seqio metric functions; None: the kind's standard metrics
        (`palimix.kinds`); [] for none. A multilingual task scores each language on
        its own with them (keys `<metric>/<language>` and `<metric>/macro`).
      overwrite: replace tasks and the mixture registered under these names before.
      vocabulary: the text vocabulary; default palimix's. detection and referring
        need one with the <loc> tokens (`palimix.vocab.default_vocabulary(tokensets=("loc",))`).
      images: whether records carry images to decode. Default: the kind's (yes for
        caption, vqa, ocr, classification and prefix_lm; a blank image for
        translation and span_corruption).
      strict_images: stop at the first unreadable image instead of dropping it.
      shuffle_buffer_size: per task; default 64 for image tasks, 1000 for text.
      per_language: False registers ONE multilingual task `<name>_mul` over all
        `languages` (each example prompted in its record's language; records in
        other languages left out) instead of a task per language: far cheaper to
        build for 100+ small languages, at the cost of per-language rates.
      rate, temperature, max_rate, unimax: the mixture over the tasks
        (palimix.mixtures.add_mixture).
      english_answer_share: the share (0..1) of non-English examples whose prompt
        asks for an English answer and whose target is the record's English
        reference (the `english` field that translated records keep; a picked
        record without one keeps its language and is counted). The prompt style's
        templates must name the answer language (instruct, pali); a training
        option (eval tasks keep 0). See preprocessors.prompts.build_example.
      answer_language: the language of every target when it is not the records'
        (English labels of XVNLI and MaRVL statements in other languages): the
        prompts ask for it (a style whose templates name it: pali, instruct).
      **options: the kind's own options (`palimix.kinds`): classification `classes`
        (a list, {language: list}, or True for the source's `class_names(language)`;
        None asks an open question), translation `source_language` (the language of
        the records' `text`), span corruption `noise_density` and
        `mean_noise_span_length`, prefix LM `max_target_units` (the most words or
        characters in a target).
    Returns the mixture `<name>`.
    """
    entry = kinds.get(kind)
    settings = _TaskSettings(
        group=name, kind=entry, codes=tuple(_languages(languages)), prompt_style=prompt_style,
        image_size=features.check_image_size(image_size), images=entry.images if images is None else bool(images),
        strict_images=strict_images, metrics=None if metrics is None else tuple(metrics),
        shuffle_buffer_size=shuffle_buffer_size,
        english_answer_share=prompt_preprocessors.check_english_answer_share(english_answer_share, name),
        answer_language=None if answer_language is None else languages_lib.normalize(answer_language))
    options = kinds.kind_options(entry, name, options)
    plan = _plan(settings, source, options, per_language)
    output_features = features.output_features(image_size, vocabulary)
    kinds.check_vocabulary(entry, output_features["targets"].vocabulary, name)  # <loc> tokens for boxes.
    built = [_build_task(settings, spec, output_features) for spec in plan]
    replaced = _names_to_replace(name, [task.name for task, _ in built], overwrite)
    return _register(name, built, replaced,
                     dict(rate=rate, temperature=temperature, max_rate=max_rate, unimax=unimax))


@dataclasses.dataclass(frozen=True)
class _TaskSettings:
    """What every task of one add_task call shares."""

    group: str
    kind: kinds.Kind
    codes: tuple[str, ...]
    prompt_style: str
    image_size: int
    images: bool
    strict_images: bool
    metrics: tuple | None
    shuffle_buffer_size: int | None
    english_answer_share: float = 0.0
    answer_language: str | None = None


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    """One task to build: its name, language (MULTILINGUAL for one over all),
    source and prepared kind options."""

    name: str
    language: str
    source: Any
    options: dict


def _plan(settings: _TaskSettings, source, options, per_language: bool) -> list[_TaskSpec]:
    """The tasks of a group, each with its source and options (errors raised here,
    before anything is built or registered)."""
    group, kind = settings.group, settings.kind
    _check_source_fields(group, kind, source)
    if settings.english_answer_share:
        _check_source_fields(group, kind, source, (prompt_preprocessors.ENGLISH_FIELD,), "english_answer_share")
    prepare = kind.prepare_options or (lambda group, options, source, codes: options)
    if not per_language:
        if isinstance(source, Mapping):
            raise UsageError(f"{group}: a multilingual task (per_language=False) reads one source, not a dict.")
        return [_TaskSpec(task_name(group, MULTILINGUAL), MULTILINGUAL, source,
                          prepare(group, options, source, list(settings.codes)))]
    specs = []
    for code in settings.codes:
        task_source = _source_for(group, source, code, settings.codes)
        specs.append(_TaskSpec(task_name(group, code), code, task_source, prepare(group, options, source, code)))
    return specs


def _build_task(settings: _TaskSettings, spec: _TaskSpec, output_features) -> tuple[seqio.Task, TaskInfo]:
    """The seqio task of `spec` and its TaskInfo, not registered."""
    kind = settings.kind
    multilingual = spec.language == MULTILINGUAL
    codes = list(settings.codes) if multilingual else [spec.language]
    segmentation = ({c: languages_lib.get(c).segmentation for c in codes} if multilingual
                    else languages_lib.get(spec.language).segmentation)
    build = functools.partial(
        prompt_preprocessors.build_example, kind=kind.name, language=codes if multilingual else spec.language,
        style=settings.prompt_style, segmentation=segmentation,
        tokenize=True,  # Tokenizing and EOS in the same map (one tf.data stage, one trace).
        # The image right before that map (bad ones dropped and counted), or a blank one in it.
        decode_images=settings.images, blank_image=not settings.images, image_size=settings.image_size,
        strict_images=settings.strict_images, english_answer_share=settings.english_answer_share,
        answer_language=settings.answer_language, task_name=spec.name, **spec.options)
    prompt_preprocessors.check_prompts(kind.name, codes if multilingual else spec.language, settings.prompt_style,
                                       spec.options, settings.english_answer_share, spec.name,
                                       settings.answer_language)
    task = _PretrimmedTask(
        spec.name, source=spec.source, output_features=output_features, preprocessors=[build],
        postprocess_fn=prompt_preprocessors.postprocess_fn(kind.name, multilingual=multilingual),
        metric_fns=_metric_fns(kind, settings.metrics, codes if multilingual else spec.language),
        shuffle_buffer_size=settings.shuffle_buffer_size or (
            IMAGE_SHUFFLE_BUFFER if settings.images else TEXT_SHUFFLE_BUFFER))
    info = TaskInfo(spec.name, settings.group, kind.name, spec.language, settings.image_size, settings.prompt_style,
                    settings.images, _describe(spec.source), tuple(codes), settings.english_answer_share)
    return task, info


def _metric_fns(kind: kinds.Kind, metrics, language) -> list:
    """The task's metric functions: `metrics`, or the kind's for the language; for a
    multilingual task one function scoring each language on its own (its own
    metrics: CIDEr on jieba words for Chinese, ...)."""
    def for_language(code, scores=None):
        fns = list(metrics) if metrics is not None else kind.metric_fns(code)
        return fns if scores is None else [fn for fn in fns if per_language.takes_scores(fn) == scores]

    if isinstance(language, str):
        return for_language(language)
    for code in language:  # Unknown codes fail at registration, not at evaluation.
        languages_lib.normalize(code)
    first = for_language(language[0]) if language else []
    # Predictions and scores (perplexity) reach seqio through separate functions.
    return [per_language.by_language(functools.partial(for_language, scores=scores),
                                     name=f"{kind.name}{'_scores' if scores else ''}_per_language", scores=scores)
            for scores in (False, True) if any(per_language.takes_scores(fn) == scores for fn in first)]


def _names_to_replace(group: str, new_names: Sequence[str], overwrite: bool) -> list[str]:
    """The registered names the new group takes over (the old group's tasks, and any
    task or mixture with one of its names); UsageError for a taken name without
    `overwrite` or an invalid one. Nothing is removed here."""
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    old_group = _GROUPS.get(group, []) if overwrite else []
    replaced = [n for n in old_group if n in registered]
    for new in [group, *new_names]:
        if new not in registered:
            check_new_name(new)  # Only checks: the name is free.
        elif not overwrite:
            raise UsageError(f"a task or mixture named {new!r} is already registered; pass overwrite=True to replace it.")
        elif new not in replaced:
            replaced.append(new)
    return replaced


def _register(group: str, built, replaced: Sequence[str], mixture_options: dict):
    """Registers the built tasks and their mixture in place of `replaced`; on any
    error, puts everything back as it was."""
    saved = _take_out(group, replaced)
    names = [task.name for task, _ in built]
    try:
        for task, info in built:
            seqio.TaskRegistry.add_provider(task.name, task)
            _TASKS[task.name] = info
        _GROUPS[group] = names
        return add_mixture(group, names, **mixture_options)
    except BaseException:
        _take_out(group, [n for n in [group, *names] if _registered(n)])
        _put_back(group, saved)
        raise


class _Saved(NamedTuple):
    tasks: dict  # name -> seqio.Task
    mixtures: dict  # name -> seqio.Mixture
    infos: dict  # name -> TaskInfo
    group: list | None  # The group's task names, if it was one.


def _registered(name: str) -> bool:
    return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


def _take_out(group: str, names: Sequence[str]) -> _Saved:
    """Unregisters `names` (tasks or mixtures) and forgets `group`; returns what was there."""
    saved = _Saved({}, {}, {}, _GROUPS.pop(group, None))
    for name in names:
        if name in seqio.TaskRegistry.names():
            saved.tasks[name] = seqio.TaskRegistry.get(name)
            seqio.TaskRegistry.remove(name)
        if name in seqio.MixtureRegistry.names():
            saved.mixtures[name] = seqio.MixtureRegistry.get(name)
            seqio.MixtureRegistry.remove(name)
        if name in _TASKS:
            saved.infos[name] = _TASKS.pop(name)
    return saved


def _put_back(group: str, saved: _Saved) -> None:
    for name, task in saved.tasks.items():
        seqio.TaskRegistry.add_provider(name, task)
    for name, mixture in saved.mixtures.items():
        seqio.MixtureRegistry.add_provider(name, mixture)
    _TASKS.update(saved.infos)
    if saved.group is not None:
        _GROUPS[group] = saved.group


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


def _check_source_fields(name, kind: kinds.Kind, source, needed=None, what=None):
    """Catch a source that lacks the kind's fields (or `needed` ones, for `what`) at
    registration, not deep in tf.data."""
    sample = next(iter(source.values())) if isinstance(source, Mapping) else source
    fields = getattr(sample, "fields", None)
    if fields is None:
        return  # A plain seqio DataSource: its records are checked when read.
    needed = kind.fields if needed is None else needed
    missing = [f for f in needed if f not in fields]
    if missing:
        raise UsageError(f"{name}: {what or kind.name + ' tasks'} need{'s' if what else ''} the record fields "
                         f"{list(needed)}; {sample!r} yields {list(fields)} (missing {missing}).")


def _describe(source) -> str:
    text = repr(source)
    return text if len(text) <= 120 else text[:117] + "..."
