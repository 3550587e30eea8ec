"""Text preprocessors: tokenizing the text features, T5 span corruption, prefix LM.

Span corruption and prefix-LM splitting work on *units* of text: words for languages
written with spaces, characters for those that are not (zh, ja, th, km, ...; the
`segmentation` column of the languages table). Working on strings rather than token
ids keeps `inputs_pretokenized` / `targets_pretokenized` readable and lets the prompt
template wrap the noised text; the sentinels are written `<extra_id_0>`,
`<extra_id_1>`, ..., which seqio's SentencePieceVocabulary encodes as its extra ids
(the highest ids, as T5 numbers them).

The noise follows T5 (Raffel et al. 2020, sec. 3.1.4): `round(n * noise_density)`
units are masked in `round(num_noise / mean_noise_span_length)` spans whose lengths
(and the lengths of the kept runs between them) are random. Randomness comes from
seqio's per-example seeds (`seqio.map_over_dataset(num_seeds=1)`), so a dataset
built with a seed is reproducible.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from palimix.features import TEXT_FEATURES

SENTINEL_PREFIX = "<extra_id_"
# The map functions here branch only on Python values fixed when a task is built, so
# autograph has nothing to convert; skipping it makes building a task's pipeline
# several times faster (a mixture of hundreds of tasks builds them all).
_no_autograph = tf.autograph.experimental.do_not_convert
# Unit separators by segmentation kind: "space" languages join words with a space.
_SPACE = "space"


def tokenize_text(dataset: tf.data.Dataset, output_features, copy_pretokenized: bool = True) -> tf.data.Dataset:
    """seqio.preprocessors.tokenize restricted to `inputs` and `targets`.

    seqio's tokenize would also run the image through a pass-through vocabulary and
    copy it to `image_pretokenized`; the image is never tokenized here. EOS is added
    later by `seqio.preprocessors.append_eos_after_trim`, after trimming.
    """
    text_features = {k: output_features[k] for k in TEXT_FEATURES if k in output_features}
    return seqio.preprocessors.tokenize(dataset, text_features, copy_pretokenized=copy_pretokenized, with_eos=False)


def tokenize_and_append_eos_fn(output_features, sequence_length=None, copy_pretokenized: bool = True):
    """The per-example function of `tokenize_and_append_eos` (example -> example), for
    preprocessors that do it inside a map of their own (`prompts.build_example`)."""
    text_features = {k: output_features[k] for k in TEXT_FEATURES if k in output_features}

    def tokenize(example):
        example = dict(example)
        for key, feature in text_features.items():
            text = example[key]
            if copy_pretokenized:
                example[f"{key}_pretokenized"] = text
            length = (sequence_length or {}).get(key) if feature.add_eos else None
            if tf.get_static_value(text) is not None:
                # A text fixed when the task is built (a prompt without per-example
                # fields): tokenized once here, a constant in the graph.
                example[key] = tf.constant(_static_ids(feature, tf.get_static_value(text), length), tf.int32)
                continue
            ids = feature.vocabulary.encode_tf(text)
            if feature.add_eos:
                if length is not None:
                    ids = ids[: length - 1]  # Room for EOS.
                ids = tf.concat([ids, tf.constant([feature.vocabulary.eos_id], ids.dtype)], axis=0)
            example[key] = ids
        return example

    return tokenize


def _static_ids(feature, text: bytes, length) -> list[int]:
    """The ids `tokenize` gives `text`, computed now with the same TF op (eagerly)."""
    with tf.init_scope():
        ids = [int(i) for i in feature.vocabulary.encode_tf(tf.constant(text, tf.string)).numpy()]
    if feature.add_eos:
        ids = (ids[: length - 1] if length is not None else ids) + [feature.vocabulary.eos_id]
    return ids


def tokenize_and_append_eos(
    dataset: tf.data.Dataset, output_features, sequence_length=None, copy_pretokenized: bool = True
) -> tf.data.Dataset:
    """`tokenize_text` followed by `seqio.preprocessors.append_eos_after_trim`, with the
    same output, in one map without autograph: each tf.data stage costs per example,
    and each traced function costs when a task is built."""
    fn = _no_autograph(tokenize_and_append_eos_fn(output_features, sequence_length, copy_pretokenized))
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def split_units(text: tf.Tensor, segmentation) -> tf.Tensor:
    """1-D string tensor of the words ("space") or characters (other) of `text`.

    `segmentation` is a name, or a scalar bool tensor (True: words) when it varies
    per example (multilingual tasks)."""
    if not isinstance(segmentation, str):
        return tf.cond(segmentation, lambda: split_units(text, _SPACE), lambda: split_units(text, "char"))
    text = tf.strings.strip(text)
    if segmentation == _SPACE:
        return tf.strings.split(text)
    # Characters, with combining marks (Thai vowels, Devanagari matras) kept on their
    # base character: a span boundary never splits what is written as one glyph.
    chars = tf.strings.unicode_split(text, "UTF-8")
    chars = tf.boolean_mask(chars, tf.logical_not(tf.strings.regex_full_match(chars, r"\s")))
    is_mark = tf.strings.regex_full_match(chars, r"\p{M}")
    cluster = tf.maximum(tf.cumsum(tf.cast(tf.logical_not(is_mark), tf.int32)) - 1, 0)
    num_clusters = tf.maximum(tf.reduce_max(cluster) + 1, 0)
    num_clusters = tf.where(tf.size(chars) > 0, num_clusters, 0)
    return tf.strings.unsorted_segment_join(chars, cluster, num_clusters)


def join_units(units: tf.Tensor, segmentation) -> tf.Tensor:
    if not isinstance(segmentation, str):
        return tf.cond(segmentation, lambda: join_units(units, _SPACE), lambda: join_units(units, "char"))
    return tf.strings.reduce_join(units, separator=" " if segmentation == _SPACE else "")


def segmentation_of(example, segmentation):
    """`segmentation` itself (a name), or, given {language: name}, a bool tensor (words?)
    for the example's language."""
    if isinstance(segmentation, str):
        return segmentation
    spaced = [code for code, name in segmentation.items() if name == _SPACE]
    if not spaced:
        return tf.constant(False)
    return tf.reduce_any(tf.equal(example["language"], tf.constant(spaced)))


def _random_segment_lengths(num_items, num_segments, seed):
    """Lengths of `num_segments` non-empty segments that a random split of
    `num_items` items gives (num_items >= num_segments >= 1)."""
    # Choose num_segments - 1 of the num_items - 1 gaps as segment boundaries.
    is_boundary = tf.range(num_items - 1) < num_segments - 1
    is_boundary = tf.random.experimental.stateless_shuffle(is_boundary, seed=seed)
    segment_id = tf.concat([[0], tf.cumsum(tf.cast(is_boundary, tf.int32))], axis=0)
    return tf.math.unsorted_segment_sum(tf.ones_like(segment_id), segment_id, num_segments)


def random_spans_noise_mask(length, noise_density: float, mean_noise_span_length: float, seed) -> tf.Tensor:
    """Boolean [length] mask of T5-style noise spans; needs length >= 2.

    At least one unit is noise and at least one is kept; noise never starts the text
    (a kept run comes first), as in T5. T5 also always ENDS with noise, which for a
    short text (one span) means "predict the last words" every time; so the mask is
    then rotated left by a random part of its first kept run (moved to the end), which
    places the spans anywhere without splitting or merging any (T5's later
    `random_roll` can split the last span in two).
    """
    length = tf.cast(length, tf.int32)
    lengthf = tf.cast(length, tf.float32)
    num_noise = tf.cast(tf.round(lengthf * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
    num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, length - num_noise))
    seeds = tf.random.experimental.stateless_split(seed, 3)
    noise_lengths = _random_segment_lengths(num_noise, num_spans, seeds[0])
    kept_lengths = _random_segment_lengths(length - num_noise, num_spans, seeds[1])
    # Interleave: kept, noise, kept, noise, ...
    run_lengths = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [-1])
    run_index = tf.repeat(tf.range(2 * num_spans), run_lengths)
    mask = tf.equal(run_index % 2, 1)
    shift = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=kept_lengths[0], dtype=tf.int32)
    return tf.roll(mask, -shift, axis=0)


def _sentinel_strings(count):
    return tf.strings.join([SENTINEL_PREFIX, tf.strings.as_string(tf.range(count)), ">"])


def _replace_spans_with_sentinels(units, span_mask):
    """Units with each masked run replaced by the next sentinel (<extra_id_0>, ...)."""
    previous = tf.concat([[False], span_mask[:-1]], axis=0)
    first_of_span = tf.logical_and(span_mask, tf.logical_not(previous))
    span_index = tf.cumsum(tf.cast(first_of_span, tf.int32)) - 1
    sentinels = tf.gather(_sentinel_strings(tf.maximum(tf.reduce_max(span_index) + 1, 1)), tf.maximum(span_index, 0))
    replaced = tf.where(first_of_span, sentinels, units)
    keep = tf.logical_or(tf.logical_not(span_mask), first_of_span)
    return tf.boolean_mask(replaced, keep)


def _space_before_sentinels(text):
    """A space before every sentinel (also at the start and between characters of
    unsegmented scripts): seqio's SentencePiece vocabularies add the sentinels as
    word-initial pieces ("▁<extra_id_0>"), which only match after a space."""
    return tf.strings.regex_replace(text, r"(^|[^ ])<extra_id_", r"\1 <extra_id_")


def span_corruption(
    dataset: tf.data.Dataset,
    *,
    segmentation=_SPACE,
    text_key: str = "text",
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tf.data.Dataset:
    """T5 span corruption of `text_key` into `noised_text` and `targets` (strings).

    `noised_text` keeps the unmasked units with one sentinel per masked span; the
    target lists each sentinel followed by the units it replaced. Examples with fewer
    than two units cannot be corrupted and are dropped (count them with `palimix stats`).
    """

    @seqio.map_over_dataset(num_seeds=1)
    @_no_autograph
    def corrupt(example, seed):
        example = dict(example)
        unit = segmentation_of(example, segmentation)
        units = split_units(example[text_key], unit)
        mask = random_spans_noise_mask(tf.size(units), noise_density, mean_noise_span_length, seed)
        # Both sides number their spans from 0 in order, so the same sentinel
        # marks a span in the input and introduces it in the target.
        example["noised_text"] = _space_before_sentinels(join_units(_replace_spans_with_sentinels(units, mask), unit))
        example["targets"] = _space_before_sentinels(
            join_units(_replace_spans_with_sentinels(units, tf.logical_not(mask)), unit))
        return example

    dataset = dataset.filter(_no_autograph(
        lambda ex: tf.size(split_units(ex[text_key], segmentation_of(ex, segmentation))) >= 2))
    return corrupt(dataset)


def prefix_lm_split(
    dataset: tf.data.Dataset,
    *,
    segmentation=_SPACE,
    text_key: str = "text",
    max_target_units: int | None = None,
    random: bool = True,
) -> tf.data.Dataset:
    """Splits `text_key` into `prefix` and `targets` (the continuation) at a unit boundary.

    With `random`, the split point is uniform over the boundaries that leave at
    least one unit on each side (and at most `max_target_units` in the target);
    otherwise it is the middle of the text (or the first allowed boundary after
    it). Texts of fewer than two units are dropped.
    """

    @seqio.map_over_dataset(num_seeds=1)
    @_no_autograph
    def split(example, seed):
        example = dict(example)
        unit = segmentation_of(example, segmentation)
        units = split_units(example[text_key], unit)
        n = tf.size(units)
        lowest = 1
        if max_target_units:
            lowest = tf.maximum(1, n - int(max_target_units))
        if random:
            cut = tf.random.stateless_uniform([], seed, minval=lowest, maxval=n, dtype=tf.int32)
        else:
            cut = tf.maximum(lowest, n // 2)
        example["prefix"] = join_units(units[:cut], unit)
        example["targets"] = join_units(units[cut:], unit)
        return example

    dataset = dataset.filter(_no_autograph(
        lambda ex: tf.size(split_units(ex[text_key], segmentation_of(ex, segmentation))) >= 2))
    return split(dataset)
