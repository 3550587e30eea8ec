"""Raw source records -> prompted examples: `inputs`, `targets`, `references` (strings).

One seqio-style preprocessor, `build_example`, turns the kind fields a source yields
(`captions`, `question`/`answers`, `text`, `label`; see `palimix.sources`) into

    inputs      the prompt in the task's language and style (palimix.prompts)
    targets     the text to generate
    references  every acceptable answer, for scoring (caption: all captions; vqa:
                all human answers; other kinds: the target)
    language, kind, id

What each kind reads, how its prompt is filled in and how its target is picked from
its references is the kind's entry in `palimix.kinds`; this module carries the
entries out. Examples whose target would be empty (no captions, no answers, empty
text) are dropped: `palimix stats` shows input and output counts per task. Text that
is not valid UTF-8 (a prompt field or a reference) stops the pipeline with an error
naming the task, the example id and the field.

The image can be handled with it (`decode_images=True`: `image/encoded` decoded by
`palimix.preprocessors.image.ImageDecoder` right before the map, bad images dropped
and counted; `blank_image=True`: the all-zero image with has_image=0 of
language-only kinds, in the map), and then one filter drops bad images and examples
without a target together. Every tf.data stage costs CPU per example (~0.15 ms here
for a map or a filter), so prompt, target, tokenizing and EOS are one map.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from palimix import features, prompts
from palimix import kinds as kinds_lib
from palimix.errors import UsageError
from palimix.metrics import per_language
from palimix.preprocessors import text as text_preprocessors
from palimix.preprocessors.text import _no_autograph

_log = logging.getLogger(__name__)

# Keys an example keeps after build_example (plus image and has_image).
EXAMPLE_KEYS = ("inputs", "targets", "references", "language", "kind", "id")


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


# How a kind's target is picked from its references (kinds.Kind.target): fn(references, seed).
_PICK_TARGET = {
    kinds_lib.SAMPLE: _sample,
    kinds_lib.MOST_FREQUENT: lambda references, seed: most_frequent(references),
    kinds_lib.FIRST: lambda references, seed: references[0],
}


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
ENGLISH = "en"
# The record key with a record's English references (a translated record keeps its
# English original there; palimix.sources: the `english` list field).
ENGLISH_FIELD = "english"


class _PromptTable:
    """Every prompt a task can build, rendered once with markers for the per-example
    fields: for each language, its templates asking for an answer in that language,
    then (with an English-answer share) the same templates asking for English. An
    example's row is offset[language] + english * count[language] + variant."""

    def __init__(self, kind: str, codes: Sequence[str], style: str, static_fields, dynamic_fields: Sequence[str],
                 with_english: bool, answer_language: str | None = None):
        self.codes, self.offsets, self.counts, rows = list(codes), [], [], []
        markers = {f: f"{_MARK}{f}{_MARK}" for f in dynamic_fields}
        for code in codes:
            count = len(prompts.variants(kind, code, style))
            self.offsets.append(len(rows))
            self.counts.append(count)
            for answer in [answer_language or code] + ([ENGLISH] if with_english else []):
                rows += [prompts.prompt(kind, code, style=style, answer_language=answer, variant=v,
                                        **static_fields(code), **markers).split(_MARK) for v in range(count)]
        order = {tuple(r[1::2]) for r in rows}
        if len(order) != 1:
            raise UsageError(f"the {style} {kind} templates of {list(codes)} place their fields differently; "
                             "register one task per language (per_language=True).")
        self.fields = order.pop()
        self.literals = [[r[0::2][i] for r in rows] for i in range(len(self.fields) + 1)]

    @property
    def single(self) -> bool:
        return len(self.literals[0]) == 1

    def builder(self):
        """fn(example, {field: tensor}, english: bool tensor) -> the prompt tensor."""
        literals = [tf.constant(column) for column in self.literals]
        offsets, counts = tf.constant(self.offsets, tf.int64), tf.constant(self.counts, tf.int64)
        several = max(self.counts) > 1  # Else no hash per example (one template per language).

        choose = _template_choice(self.codes, counts, several)

        def build(example, values, english):
            index, count, variant = choose(example)
            row = offsets[index] + tf.cast(english, tf.int64) * count + variant
            parts = [tf.gather(literals[0], row)]
            for i, field in enumerate(self.fields):
                parts += [values[field], tf.gather(literals[i + 1], row)]
            return tf.strings.join(parts)

        return build


def _template_choice(codes: Sequence[str], counts: tf.Tensor, several: bool):
    """fn(example) -> (its language's index in `codes`, that language's template count,
    the example's template variant: prompts.variant_for's hash, 0 with one template each)."""
    codes_tensor = tf.constant(list(codes))

    def choose(example):
        if len(codes) == 1:  # A one-language task: its records may name any language.
            index, code = tf.constant(0), codes_tensor[0]
        else:
            index = tf.argmax(tf.cast(tf.equal(codes_tensor, example["language"]), tf.int32), output_type=tf.int32)
            code = example["language"]
        count = counts[index]
        if not several:
            return index, count, tf.constant(0, tf.int64)
        key = prompts.choice_key(_id_string(example), code)
        return index, count, tf.strings.to_hash_bucket_fast(key, prompts.HASH_BUCKETS) % count

    return choose


def _unconditional_prompt_builder(kind: str, codes: Sequence[str], style: str):
    """fn(example) -> the example's prompt without its fields, in its language and
    template variant: `prompts.prompt_without_fields`, the very text classifier-free
    guidance decodes against (palimix.runner.generate.prompts_for), so both are
    tokenized from one string ("generate en", never "generate en " with the empty
    description's space, which tokenizes differently)."""
    counts = [len(prompts.variants(kind, code, style)) for code in codes]
    texts = [prompts.prompt_without_fields(kind, code, style=style, variant=v)
             for code, count in zip(codes, counts) for v in range(count)]
    if len(texts) == 1:
        return lambda example: tf.constant(texts[0])
    table, offsets = tf.constant(texts), tf.constant(np.cumsum([0] + counts[:-1]), tf.int64)
    choose = _template_choice(codes, tf.constant(counts, tf.int64), max(counts) > 1)

    def build(example):
        index, _, variant = choose(example)
        return tf.gather(table, offsets[index] + variant)

    return build


def unconditional_picked(example_id, share: float):
    """Whether an example is shown the unconditional prompt (condition dropout, for
    classifier-free guidance): Fingerprint64("unconditional/<id>") lands in the lowest
    `share` of the hash range (a pure function of the example, the same on every run
    and epoch, as `english_answer_picked`)."""
    key = tf.strings.join(["unconditional/", example_id])
    bucket = tf.strings.to_hash_bucket_fast(key, prompts.HASH_BUCKETS)
    return bucket < tf.constant(int(round(share * prompts.HASH_BUCKETS)), tf.int64)


def _prompt_builder(kind: str, codes: Sequence[str], style: str, static_fields, dynamic_fields: Sequence[str],
                    with_english: bool = False, answer_language: str | None = None):
    """fn(example, {field: tensor}, english) -> the prompt tensor, for one language or
    several, one template or several (chosen per example: prompts.variant_for), and,
    `with_english`, the English-answer form where `english` is true. The answer
    language is the prompt's, or `answer_language` for every example."""
    table = _PromptTable(kind, codes, style, static_fields, dynamic_fields, with_english, answer_language)
    if table.single and not dynamic_fields:
        text = table.literals[0][0]
        return lambda example, values, english: tf.constant(text)
    if table.single:  # One template: no lookup tables per example.
        code = codes[0]
        return lambda example, values, english: prompts.prompt_tf(kind, code, style=style, answer_language=answer_language,
                                                                  **static_fields(code), **values)
    return table.builder()


class _EnglishAnswerSkips:
    """Thread-safe counts, per task, of examples picked for an English answer that
    carry no English reference (they keep their own language); the first few are
    logged with their ids."""

    LOGGED = 5

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()

    def add(self, task_name: bytes, example_id: bytes) -> np.int64:
        task, example = task_name.decode("utf-8"), example_id.decode("utf-8")
        with self._lock:
            self._counts[task] += 1
            seen = self._counts[task]
        if seen <= self.LOGGED:
            _log.warning("Task %r: example %s was picked for an English answer but has no English reference "
                         "(`%s`); it keeps its own language%s.", task or "<unnamed>", example, ENGLISH_FIELD,
                         " (further ones are only counted)" if seen == self.LOGGED else "")
        return np.int64(seen)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


_SKIPS = _EnglishAnswerSkips()


def english_answer_skips() -> dict[str, int]:
    """{task name: examples picked for an English answer without an English reference},
    counted in this process as datasets are read (each pass counts again)."""
    return _SKIPS.counts()


def reset_english_answer_skips() -> None:
    _SKIPS.reset()


def english_answer_picked(example_id, language, share: float):
    """Whether an example in `language` is asked for an English answer: never for
    English ones; else Fingerprint64("english/<language>/<id>") lands in the lowest
    `share` of the hash range (a pure function of the example, like the template)."""
    key = tf.strings.join(["english/", prompts.choice_key(example_id, language)])
    bucket = tf.strings.to_hash_bucket_fast(key, prompts.HASH_BUCKETS)
    below = bucket < tf.constant(int(round(share * prompts.HASH_BUCKETS)), tf.int64)
    return tf.logical_and(below, tf.not_equal(language, ENGLISH))


def build_example(
    dataset: tf.data.Dataset,
    *,
    kind: str,
    language,
    style: str = "pali",
    segmentation="space",
    tokenize: bool = False,
    decode_images: bool = False,
    blank_image: bool = False,
    image_size: int | None = None,
    strict_images: bool = False,
    english_answer_share: float = 0.0,
    answer_language: str | None = None,
    task_name: str = "",
    output_features=None,
    sequence_length=None,
    **options,
) -> tf.data.Dataset:
    """Turns records into prompted examples of `kind` (see module doc).

    Args:
      kind: a kind of palimix.kinds.
      language: the normalized code of the prompt and target language; or a list of
        codes for a multilingual task: each example's prompt is in its record's
        `language`, and records in other languages are left out.
      style: prompt style ("pali", "natural", "instruct" or "verbatim"; see
        palimix.prompts). A style with several templates per language (instruct)
        gives each example one of them: `prompts.variant_for(id, language, count)`.
      segmentation: "space" or other (characters): the units that span corruption
        and prefix LM count (palimix.languages' `segmentation`); {language: name}
        for a multilingual task.
      tokenize: also tokenize `inputs` and `targets` and append EOS after trimming
        to `sequence_length` (`text.tokenize_and_append_eos`), in the same map: one
        tf.data stage and one traced function instead of three. seqio passes
        `output_features` and `sequence_length`.
      decode_images: decode each record's `image/encoded` to `image`/`has_image`
        (`image.ImageDecoder`: `image_size`, `strict_images`; bad images are dropped
        and counted under `task_name`).
      blank_image: give each example the all-zero `image_size` image, has_image 0
        (language-only kinds; no file is read).
      english_answer_share: the share (0..1) of non-English examples asked for an
        English answer (mBLIP asks about half of its translated VQA examples so).
        Which ones: `english_answer_picked` (a hash of language and id, the same on
        every run). Such an example's prompt names English (every template must be
        able to: {language_name} or {lang}) and its target and references are its
        record's English references (the `english` list field, which a translated
        record keeps: palimix.translate). A picked example without them keeps its
        own language and is counted (`english_answer_skips()`, first ones logged).
        The example's `language` stays its record's.
      answer_language: the language of every target when it is not the records'
        (xGQA, XVNLI, MaRVL: English answers to questions in other languages); the
        prompts name it ({lang}, {language_name}). Not with english_answer_share.
      task_name: named in drop counts and in errors about an example.
      **options: the kind's options (`palimix.kinds`: classification `classes`, a
        list or {language: list}; translation `source_language`; span corruption
        `noise_density`, `mean_noise_span_length`; prefix LM `max_target_units`;
        text_to_image `unconditional_share`: the share (0..1) of examples shown the
        prompt without its description, `prompts.prompt_without_fields`, picked by
        `unconditional_picked`, for classifier-free guidance).
    """
    entry = kinds_lib.get(kind)
    codes = [language] if isinstance(language, str) else list(language)
    options = _prepared_options(entry, task_name or kind, options, codes)
    check_english_answer_share(english_answer_share, task_name or kind)
    _check_answer_options(answer_language, english_answer_share, task_name or kind, options)
    if (decode_images or blank_image) and not image_size:
        raise UsageError("build_example(decode_images=/blank_image=True) needs image_size.")
    if tokenize and output_features is None:
        raise UsageError("build_example(tokenize=True) needs output_features (seqio passes them to preprocessors).")
    dataset = _keep_languages(dataset, codes)
    if entry.text_stage is not None:
        dataset = entry.text_stage(dataset, segmentation, options)
    if decode_images:
        # Imported here: the image module pulls in Pillow, not needed to list tasks.
        from palimix.preprocessors import image as image_preprocessors

        decoder = image_preprocessors.ImageDecoder(image_size=image_size, strict=strict_images, task_name=task_name)
        dataset = decoder.decode(dataset)
        if entry.image_stage is not None:  # (e.g. prefix_image's mask; a blank image has nothing to change)
            dataset = entry.image_stage(dataset, options)
    finish = text_preprocessors.tokenize_and_append_eos_fn(output_features, sequence_length) if tokenize else None
    build = _example_builder(entry, codes, style, options, task_name=task_name, finish=finish,
                             blank_image_size=image_size if blank_image else None,
                             english_answer_share=english_answer_share, answer_language=answer_language)
    if decode_images or blank_image:
        # Bad images and examples without a target are marked in the map
        # (has_image < 0) and dropped by one filter after it.
        return build(dataset).filter(features.is_kept)
    return build(dataset.filter(_no_autograph(lambda example: _has_target(entry, example))))


def check_prompts(kind: str, language, style: str, options, english_answer_share: float = 0.0,
                  task_name: str = "", answer_language: str | None = None) -> None:
    """Renders every prompt a task of `kind` in `language` (a code or a list) can
    build, so a missing template, a bad style or a template that cannot ask for an
    English answer is an error when the task is registered, not when it is read."""
    entry = kinds_lib.get(kind)
    codes = [language] if isinstance(language, str) else list(language)
    options = _prepared_options(entry, task_name or kind, options, codes)
    template = entry.template_kind(options)
    _check_answer_options(answer_language, english_answer_share, task_name or kind, options)
    _PromptTable(template, codes, style, _static_fields(entry, template, options), tuple(entry.prompt_fields),
                 with_english=english_answer_share > 0, answer_language=answer_language)
    if options.get(kinds_lib.UNCONDITIONAL_SHARE):
        _unconditional_prompt_builder(template, codes, style)


def _check_answer_options(answer_language, english_answer_share: float, name: str, options) -> None:
    if answer_language is not None and english_answer_share > 0:
        raise UsageError(f"{name}: answer_language= fixes the answer language of every example; "
                         f"english_answer_share= cannot ask some for English then.")
    if options.get(kinds_lib.UNCONDITIONAL_SHARE) and (answer_language is not None or english_answer_share > 0):
        # The unconditional prompt names the prompt's own language: it has no other answer language.
        raise UsageError(f"{name}: unconditional_share= shows some examples the prompt without its fields, in "
                         "the prompt's own language; it does not combine with answer_language= or "
                         "english_answer_share=.")


def check_english_answer_share(share, name: str) -> float:
    """`share` if it is a number in 0..1, else UsageError."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise UsageError(f"{name}: english_answer_share must be a number from 0 to 1, got {share!r}.")
    return float(share)


def _prepared_options(entry: kinds_lib.Kind, name: str, options, codes) -> dict:
    """The kind's options, checked and prepared (add_task prepared them already, with
    the source; preparing is idempotent, so direct callers get the same checks)."""
    options = kinds_lib.kind_options(entry, name, options)
    if entry.prepare_options is not None:
        options = entry.prepare_options(name, options, None, codes[0] if len(codes) == 1 else codes)
    return options


def _keep_languages(dataset: tf.data.Dataset, codes: Sequence[str]) -> tf.data.Dataset:
    """A multilingual task reads the records of its languages only."""
    if len(codes) == 1:
        return dataset
    codes_tensor = tf.constant(list(codes))
    return dataset.filter(_no_autograph(lambda ex: tf.reduce_any(tf.equal(ex["language"], codes_tensor))))


def _example_builder(entry: kinds_lib.Kind, codes, style: str, options, *, task_name: str, finish,
                     blank_image_size: int | None, english_answer_share: float = 0.0,
                     answer_language: str | None = None):
    """The map from a record to its example (seqio seeds it per example)."""
    template = entry.template_kind(options)
    with_english = english_answer_share > 0
    prompt_for = _prompt_builder(template, codes, style, _static_fields(entry, template, options),
                                 tuple(entry.prompt_fields), with_english=with_english,
                                 answer_language=answer_language)
    pick_target = _PICK_TARGET[entry.target]
    multilingual = len(codes) > 1
    unconditional = _unconditional_prompts(entry, template, codes, style, options)

    @seqio.map_over_dataset(num_seeds=1)
    @_no_autograph
    def build(example, seed):
        own = _references(entry, example)
        kept = _has_target(entry, example, own)
        english, references, counted = _english_answer(task_name, example, own, english_answer_share, kept)
        values = {field: example[key] for field, key in entry.prompt_fields.items()}
        checks = _utf8_checks(task_name, example, {**{entry.prompt_fields[f]: v for f, v in values.items()},
                                                   entry.references: references})
        with tf.control_dependencies(checks + counted):
            out = {
                "inputs": tf.identity(unconditional(example, prompt_for(example, values, english))),
                "targets": tf.identity(pick_target(references, seed)),
                "references": references,
                "language": example["language"] if multilingual else tf.constant(codes[0]),
                "kind": tf.constant(entry.name),
                "id": _id_string(example),
            }
        if blank_image_size:
            out["image"] = tf.zeros([blank_image_size, blank_image_size, 3], tf.float32)
            out["has_image"] = tf.constant([0], tf.int32)
        elif "image" in example:
            out["image"], out["has_image"] = example["image"], example["has_image"]
        if "has_image" in out:  # (min: the decoder's end marker, END_OF_DATA, stays as it is.)
            out["has_image"] = tf.where(kept, out["has_image"], tf.minimum(out["has_image"], features.DROPPED))
        return finish(out) if finish else out

    return build


def _unconditional_prompts(entry: kinds_lib.Kind, template: str, codes, style: str, options):
    """fn(example, its prompt) -> the prompt, or for the examples `unconditional_picked`
    with the kind's `unconditional_share` option (text_to_image) the prompt without its
    fields: condition dropout, so that a run learns the unconditional distribution that
    classifier-free guidance contrasts with (Parti, Muse: ~10%)."""
    share = options.get(kinds_lib.UNCONDITIONAL_SHARE, 0.0)
    if not share:
        return lambda example, prompt: prompt
    without_fields = _unconditional_prompt_builder(template, codes, style)

    def choose(example, prompt):
        return tf.where(unconditional_picked(_id_string(example), share), without_fields(example), prompt)

    return choose


def _english_answer(task_name: str, example, own: tf.Tensor, share: float, kept: tf.Tensor):
    """(English answer?, the references to use, [the skip count op]) of one record;
    only examples that stay (`kept`, and not a dropped image or the decoder's end
    marker) are counted."""
    if share <= 0:
        return tf.constant(False), own, []
    if ENGLISH_FIELD not in example:
        raise UsageError(f"{task_name or 'build_example'}: english_answer_share needs records with the "
                         f"`{ENGLISH_FIELD}` field (their English references); this source has "
                         f"{sorted(example)}.")
    example_id = _id_string(example)
    picked = english_answer_picked(example_id, example["language"], share)
    english = _as_list(example[ENGLISH_FIELD])
    has_english = tf.size(english) > 0
    skipped = tf.logical_and(picked, tf.logical_not(has_english))
    if "has_image" in example:
        kept = tf.logical_and(kept, example["has_image"][0] >= 0)
    skipped = tf.logical_and(skipped, kept)
    count = tf.cond(skipped, lambda: tf.numpy_function(_SKIPS.add, [tf.constant(task_name), example_id], tf.int64,
                                                       stateful=True, name="palimix_count_english_skip"),
                    lambda: tf.constant(0, tf.int64))
    use = tf.logical_and(picked, has_english)
    return use, tf.cond(use, lambda: english, lambda: own), [count]


def _static_fields(entry: kinds_lib.Kind, template: str, options):
    """fn(code) -> the template's fields that come from options (a class list, the
    source language); an option given per language as {language: value}."""
    names = [f for f in entry.templates[template] if f in entry.prompt_options]

    def fields(code):
        values = {f: options[entry.prompt_options[f]] for f in names}
        return {f: (v[code] if isinstance(v, Mapping) else v) for f, v in values.items()}

    return fields


def _references(entry: kinds_lib.Kind, example) -> tf.Tensor:
    """Every acceptable target of a record (the target is picked from them)."""
    value = example[entry.references]
    if entry.many_references:
        return _as_list(value)
    return tf.reshape(value if entry.verbatim_references else tf.strings.strip(value), [1])


def _has_target(entry: kinds_lib.Kind, example, references=None) -> tf.Tensor:
    """Whether a record makes an example: a non-blank target and required text."""
    references = _references(entry, example) if references is None else references
    if entry.many_references:
        ok = tf.size(references) > 0
    else:
        ok = tf.strings.length(tf.strings.strip(references[0])) > 0
    for key in entry.required_text:
        ok = tf.logical_and(ok, tf.strings.length(tf.strings.strip(example[key])) > 0)
    return ok


def _utf8_checks(task_name: str, example, texts: Mapping[str, tf.Tensor]) -> list:
    """Assertions that each text is valid UTF-8, naming the task, the example id and
    the field: text in another encoding would become a garbled prompt or target."""
    checks = []
    for field, value in texts.items():
        # Transcoding replaces invalid bytes (U+FFFD): valid text comes back unchanged.
        valid = tf.reduce_all(tf.equal(tf.strings.unicode_transcode(value, "UTF-8", "UTF-8"), value))
        # No quotes: tf.debugging.Assert prints its strings C-escaped (\\').
        message = tf.strings.join([f"Task {task_name or '<unnamed>'}: the example with id ", _id_string(example),
                                   f" has text that is not valid UTF-8 in its field {field}"])
        checks.append(tf.debugging.Assert(valid, [message]))
    return checks


def _id_string(example) -> tf.Tensor:
    return example["id"] if example["id"].dtype == tf.string else tf.strings.as_string(example["id"])


def postprocess_fn(kind: str, multilingual: bool = False):
    """The seqio `postprocess_fn` for a task of `kind` (see `postprocess`)."""
    entry = kinds_lib.get(kind)
    return functools.partial(postprocess, multi_reference=entry.score_all_references, keep_language=multilingual)


def postprocess(output, example=None, is_target: bool = False, multi_reference: bool = False,
                keep_language: bool = False):
    """seqio postprocess_fn: predictions become stripped strings. Targets of kinds
    that score every reference (`multi_reference`: caption, vqa) become their
    example's `references` (all captions, all human answers); other targets stay the
    target string. With `keep_language` (a multilingual task), a target keeps its
    example's language (`metrics.per_language.language_target`) for metric functions
    that score each language on its own."""
    if not is_target:
        output = _text(output)
        return output.strip() if isinstance(output, str) else output
    if multi_reference and example is not None and "references" in example:
        target = [_text(r) for r in list(example["references"])]
    else:
        target = _text(output)
        target = target.strip() if isinstance(target, str) else target
    if not keep_language:
        return target
    if example is None or "language" not in example:
        raise UsageError("a multilingual task's targets need their example's `language` (seqio passes `example`).")
    return per_language.language_target(_text(example["language"]), target)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value
