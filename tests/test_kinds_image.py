"""The image-generation kinds (text_to_image, prefix_image; palimix.image_codes): the <img>
tokenset, codes in JSON Lines files, tasks built from such a file with real PNG images
(targets, prompts, prefix_image's masked rows), scoring, the vocabulary check, and
`palimix encode-images` with a tokenizer written in train-tokenizer's layout."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import serialization
from PIL import Image

from palimix import cli, image_codes, kinds, prompts, vocab
from palimix.errors import UsageError
from palimix.models import vqgan
from palimix.sources import JsonLines
from palimix.tasks import add_task, remove
from tests.vocab_cache import vocab_cache_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("vocab_cache_dir")  # derived models in a temporary cache

LENGTHS = {"inputs": 32, "targets": 24, "image": 16}
SHIPPED_PIECES = 8092  # <img> is the first id after the shipped model's pieces.
GRID = 4  # 4x4 codes per image in the hand-written files
TASKS = ("tk_t2i", "tk_prefix", "tk_no_img", "tk_encoded", "tk_uncond")


@pytest.fixture(scope="module")
def with_img():
    return vocab.default_vocabulary(tokensets=("img",))


@pytest.fixture(autouse=True)
def cleanup():
    yield
    for name in TASKS:
        remove(name)


def _codes(i):
    return [(7 * i + j) % 1024 for j in range(GRID * GRID)]


def _write_jsonl(root, lines, shade=lambda i: 200):
    """A JSON Lines file whose records name uniform PNG images written next to it."""
    (root / "img").mkdir(exist_ok=True)
    for i, line in enumerate(lines):
        Image.fromarray(np.full((20, 24, 3), shade(i), np.uint8)).save(root / "img" / f"{i}.png")
        line.setdefault("image", f"{i}.png")
    path = root / "images.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def codes_file(tmp_path_factory):
    return _write_jsonl(tmp_path_factory.mktemp("codes"), [
        {"id": f"e{i}", "language": "en", "captions": ["  ", f"a red circle {i}"], "codes": _codes(i)}
        for i in range(6)
    ] + [{"id": "no_codes", "language": "en", "captions": ["a blue square"]}])  # no codes: no example


def _examples(task_name):
    task = seqio.get_mixture_or_task(task_name)
    return list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())


# --- tokens and code text ---------------------------------------------------------------


def test_img_tokens_are_single_ids_after_the_shipped_pieces(with_img):
    assert with_img.vocab_size == SHIPPED_PIECES + 1025 + vocab.EXTRA_IDS
    assert with_img.encode("<img>") == [SHIPPED_PIECES]
    assert with_img.encode("<img0000>") == [SHIPPED_PIECES + 1]
    assert with_img.encode("<img1023>") == [SHIPPED_PIECES + 1024]
    text = image_codes.to_code_text([5, 0, 1023])
    assert text == "<img><img0005><img0000><img1023>"
    assert with_img.encode(text) == [SHIPPED_PIECES, SHIPPED_PIECES + 6, SHIPPED_PIECES + 1, SHIPPED_PIECES + 1024]
    assert with_img.decode(with_img.encode(text)) == text


def test_one_vocabulary_holds_box_and_image_tokens_for_one_mixture():
    both = vocab.default_vocabulary(tokensets=("loc", "img"))
    assert both.vocab_size == SHIPPED_PIECES + 1024 + 1025 + vocab.EXTRA_IDS
    assert both.encode("<loc0000><img><img0005>") == [SHIPPED_PIECES, SHIPPED_PIECES + 1024, SHIPPED_PIECES + 1030]
    for name in ("detection", "text_to_image", "prefix_image"):
        kinds.check_vocabulary(kinds.get(name), both, "mixed")  # no error


def test_code_text_round_trips_and_bad_codes_are_refused():
    assert image_codes.parse_code_text(image_codes.to_code_text(_codes(3))) == _codes(3)
    assert image_codes.parse_code_text(b"a picture <img0012> then <img99> and <img0001>") == [12, 1]
    with pytest.raises(image_codes.CodesError, match="not a square grid"):
        image_codes.check_codes([1, 2, 3])
    with pytest.raises(image_codes.CodesError, match="outside 0..1023"):
        image_codes.check_codes([0, 1, 2, 1024])
    with pytest.raises(image_codes.CodesError, match="not a list of integer codes"):
        image_codes.check_codes([0.5, 1, 2, 3])
    tf_text = image_codes.code_text_tf(tf.constant(_codes(2), tf.int32)).numpy().decode()
    assert tf_text == image_codes.to_code_text(_codes(2))


# --- sources -------------------------------------------------------------------------------


def test_jsonl_reads_codes_and_names_the_line_of_bad_ones(codes_file, tmp_path):
    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    assert set(source.fields) == {"captions", "codes"}
    records = source.records("train")
    assert records[2]["codes"] == _codes(2) and records[-1]["codes"] == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "language": "en", "codes": [1, 2, 3]}) + "\n")
    with pytest.raises(UsageError, match=r"bad.jsonl:1: 'codes': 3 codes are not a square grid"):
        JsonLines(str(bad)).records("train")


# --- tasks ----------------------------------------------------------------------------------


def test_text_to_image_task_from_jsonl(codes_file, with_img):
    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    add_task("tk_t2i", kind="text_to_image", source=source, languages=["en"], image_size=16, vocabulary=with_img)
    examples = _examples("tk_t2i_en")
    assert [ex["id"] for ex in examples] == [f"e{i}".encode() for i in range(6)]
    first = examples[1]
    assert first["inputs_pretokenized"] == b"generate en a red circle 1"
    assert first["targets_pretokenized"].decode() == image_codes.to_code_text(_codes(1))
    # <img>, the 16 codes as single ids, EOS.
    assert list(first["targets"]) == [SHIPPED_PIECES] + [SHIPPED_PIECES + 1 + c for c in _codes(1)] + [1]
    assert first["has_image"] == 0 and not first["image"].any()  # the kind has no image


def _picked(example_id, share):
    from palimix.preprocessors.prompts import unconditional_picked

    return bool(unconditional_picked(tf.constant(example_id), share))


def test_unconditional_share_prompts_a_hashed_share_without_the_description(tmp_path, with_img):
    lines = [{"id": f"u{i}", "language": "en", "captions": [f"a red circle {i}"], "codes": _codes(i)}
             for i in range(40)]
    source = JsonLines(str(_write_jsonl(tmp_path, lines)), str(tmp_path / "img"))
    add_task("tk_uncond", kind="text_to_image", source=source, languages=["en"], image_size=16, vocabulary=with_img,
             unconditional_share=0.25)
    examples = _examples("tk_uncond_en")
    picked = [_picked(f"u{i}", 0.25) for i in range(40)]
    assert 4 <= sum(picked) <= 16  # about a quarter, the same on every read (a hash of the id)
    uncond_ids = with_img.encode("generate en") + [1]
    assert uncond_ids != with_img.encode("generate en ") + [1]  # why the two must share one string
    for i, (ex, dropped) in enumerate(zip(examples, picked)):
        assert ex["targets_pretokenized"].decode() == image_codes.to_code_text(_codes(i))  # the target stays
        if dropped:
            assert ex["inputs_pretokenized"] == prompts.prompt_without_fields("text_to_image", "en").encode()
            assert list(ex["inputs"]) == uncond_ids
        else:
            assert ex["inputs_pretokenized"] == f"generate en a red circle {i}".encode()
    assert [ex["inputs_pretokenized"] for ex in _examples("tk_uncond_en")] == [
        ex["inputs_pretokenized"] for ex in examples]


def test_unconditional_prompts_follow_the_examples_language_and_template(tmp_path, with_img):
    """A multilingual instruct task: a dropped example's prompt is its own language's and
    its own template variant's prompt without the description."""
    lines = [{"id": f"m{i}", "language": ("en", "de")[i % 2], "captions": [f"a circle {i}"], "codes": _codes(i)}
             for i in range(24)]
    source = JsonLines(str(_write_jsonl(tmp_path, lines)), str(tmp_path / "img"))
    add_task("tk_uncond", kind="text_to_image", source=source, languages=["en", "de"], image_size=16,
             vocabulary=with_img, prompt_style="instruct", per_language=False, unconditional_share=0.5)
    examples = _examples("tk_uncond_mul")  # the one multilingual task
    variants_seen = set()
    assert len(examples) == 24
    for ex in examples:
        example_id, language = ex["id"].decode(), ex["language"].decode()
        variant = prompts.variant_for(example_id, language, 2)
        if _picked(example_id, 0.5):
            variants_seen.add(variant)
            expected = prompts.prompt_without_fields("text_to_image", language, style="instruct", variant=variant)
        else:
            expected = prompts.prompt("text_to_image", language, style="instruct", variant=variant,
                                      description=f"a circle {example_id[1:]}")
        assert ex["inputs_pretokenized"].decode() == expected
    assert variants_seen == {0, 1}


@pytest.mark.parametrize("options,message", [
    ({"unconditional_share": 1.5}, "unconditional_share must be a number from 0 to 1, got 1.5"),
    ({"unconditional_share": 0.1, "answer_language": "de"}, "does not combine with answer_language"),
])
def test_bad_unconditional_shares_are_refused(codes_file, with_img, options, message):
    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    with pytest.raises(UsageError, match=message):
        add_task("tk_uncond", kind="text_to_image", source=source, languages=["en"], image_size=16,
                 vocabulary=with_img, **options)
    with pytest.raises(UsageError, match="unconditional_share"):  # a text_to_image option only
        add_task("tk_uncond", kind="caption", source=source, languages=["en"], image_size=16, unconditional_share=0.1)


def test_prefix_image_task_masks_the_rows_below_the_prefix(codes_file, with_img):
    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    add_task("tk_prefix", kind="prefix_image", source=source, languages=["en"], image_size=16, vocabulary=with_img,
             prompt_style="natural")
    examples = _examples("tk_prefix_en")
    assert len(examples) == 6
    seen = set()
    for i, ex in enumerate(examples):
        k = int(image_codes.prefix_rows_tf(tf.constant(f"e{i}"), GRID))
        seen.add(k)
        assert 1 <= k < GRID
        assert ex["inputs_pretokenized"] == f"Complete the image: a red circle {i}".encode()
        assert ex["targets_pretokenized"].decode() == image_codes.to_code_text(_codes(i)[k * GRID:])
        assert ex["has_image"] == 1
        kept = k * 16 // GRID  # the image's top k/h rows
        np.testing.assert_allclose(ex["image"][:kept], 200 / 127.5 - 1, atol=1e-5)
        assert not ex["image"][kept:].any()
    assert len(seen) > 1  # k varies with the example


def test_scoring_against_targets_and_the_most_frequent_baseline():
    kind = kinds.get("text_to_image")
    assert kind.primary_metric == "code_accuracy" and kind.baseline == kinds.MOST_FREQUENT_OF_TASK
    metric, perplexity = kind.metric_fns("en")
    target = image_codes.to_code_text([1, 2, 3, 4])
    assert metric([target], [target]) == {"code_accuracy": 100.0}
    # 2 of 4 codes right, then a prediction that stops after one (right) code, then text.
    predictions = ["<img><img0001><img0009><img0003><img0009>", "<img><img0001>", "a red circle"]
    assert metric([target] * 3, predictions)["code_accuracy"] == pytest.approx(100 * 3 / 12)
    # Perplexity, a seqio score metric: per token of <img>, the codes and EOS (6 here).
    from palimix.metrics import per_language

    assert per_language.takes_scores(perplexity) and not per_language.takes_scores(metric)
    uniform = 6 * np.log(1 / 1024)
    assert perplexity([target, target], [uniform, uniform])["code_perplexity"] == pytest.approx(1024.0)
    assert perplexity([target], [0.0])["code_perplexity"] == pytest.approx(1.0)


def test_a_vocabulary_without_img_tokens_is_refused_when_the_task_is_built(codes_file):
    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    with pytest.raises(UsageError, match=r"tk_no_img: prefix_image tasks need a vocabulary with the 'img' tokens"
                                         r".*tokensets=\('img',\)"):
        add_task("tk_no_img", kind="prefix_image", source=source, languages=["en"], image_size=16)
    assert "tk_no_img_en" not in seqio.TaskRegistry.names()


# --- encode-images -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny tokenizer (random weights) written as train-tokenizer writes one."""
    out = tmp_path_factory.mktemp("tokenizer")
    cfg = vqgan.config("tiny", image_size=32, codebook_size=32)
    params = vqgan.init_params(cfg, jax.random.PRNGKey(3))
    (out / "tokenizer.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    (out / "tokenizer.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}))
    return out, cfg, params


def test_encode_images_writes_the_tokenizers_codes_next_to_the_lines(tmp_path, tokenizer_dir, with_img):
    directory, cfg, params = tokenizer_dir
    path = _write_jsonl(tmp_path, [{"id": f"p{i}", "language": "en", "captions": [f"shade {i}"]} for i in range(3)],
                        shade=lambda i: 60 * i + 20)
    lines = path.read_text().splitlines() + [json.dumps({"id": "text", "language": "en", "captions": ["no image"],
                                                         "image": ""})]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "encoded.jsonl"
    assert cli.main(["encode-images", str(path), "--tokenizer", str(directory), "--out", str(out),
                     "--image_dir", str(tmp_path / "img"), "--batch_size", "2"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["id"] for w in written] == ["p0", "p1", "p2", "text"] and "codes" not in written[3]
    model = vqgan.Vqgan(cfg)
    for i, line in enumerate(written[:3]):
        pixels = np.full((1, 32, 32, 3), (60 * i + 20) / 127.5 - 1, np.float32)
        expected = np.asarray(model.apply({"params": params}, pixels, method=model.encode)).reshape(-1)
        assert line["codes"] == expected.tolist() and len(line["codes"]) == (32 // cfg.stride) ** 2
    # The written file is a text_to_image task's source as it is.
    add_task("tk_encoded", kind="text_to_image", source=JsonLines(str(out), str(tmp_path / "img")),
             languages=["en"], image_size=16, vocabulary=with_img)
    task = seqio.get_mixture_or_task("tk_encoded_en")
    examples = list(task.get_dataset({"inputs": 16, "targets": 80, "image": 16}, split="train",
                                     shuffle=False).as_numpy_iterator())
    assert [ex["targets_pretokenized"].decode() for ex in examples] == [
        image_codes.to_code_text(w["codes"]) for w in written[:3]]


def test_encode_images_names_a_missing_image(tmp_path, tokenizer_dir, capsys):
    directory, _, _ = tokenizer_dir
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps({"id": "gone", "language": "en", "image": "gone.png"}) + "\n")
    code = cli.main(["encode-images", str(path), "--tokenizer", str(directory), "--out", str(tmp_path / "o.jsonl")])
    assert code != 0 and not (tmp_path / "o.jsonl").exists()
    assert "lines.jsonl: line with id gone: image file not found" in capsys.readouterr().err


# --- training through the runner --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "tiny_decoder"])
def test_a_mixture_of_both_kinds_trains_through_the_runner(codes_file, with_img, tmp_path, model):
    from palimix.mixtures import add_mixture
    from palimix.models import configs
    from palimix.runner.train import TrainConfig, train

    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    add_task("tk_t2i", kind="text_to_image", source=source, languages=["en"], image_size=16, vocabulary=with_img)
    add_task("tk_prefix", kind="prefix_image", source=source, languages=["en"], image_size=16, vocabulary=with_img)
    add_mixture("tk_image_mix", ["tk_t2i_en", "tk_prefix_en"])
    try:
        config = TrainConfig(mixture_or_task_name="tk_image_mix", model_dir=str(tmp_path / "run"), model=model,
                             model_overrides={"vocab_size": configs.round_vocab_size(with_img.vocab_size),
                                              "image_size": 16},
                             task_feature_lengths=LENGTHS, batch_size=4, train_steps=2, warmup_steps=1,
                             checkpoint_every=2, log_every=1, progress=False, input_mode="memory")
        result = train(config)
    finally:
        seqio.MixtureRegistry.remove("tk_image_mix")
    assert result.step == 2 and np.isfinite(result.last_loss)


# --- T5X ----------------------------------------------------------------------------------------


@pytest.mark.t5x
@pytest.mark.slow
def test_t5x_model_trains_on_and_decodes_image_targets(codes_file, with_img):
    """The task's batches through palimix's feature converter into T5X's PaliModel: the loss of
    image targets, and greedy decoding whose text parses back to codes and scores."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    from t5x import adafactor, decoding

    from palimix.models import configs, networks, pali, t5x_model

    source = JsonLines(str(codes_file), str(codes_file.parent / "img"))
    add_task("tk_prefix", kind="prefix_image", source=source, languages=["en"], image_size=16, vocabulary=with_img)
    config = configs.get("tiny", vocab_size=configs.round_vocab_size(with_img.vocab_size), image_size=16)
    task = seqio.get_mixture_or_task("tk_prefix_en")
    converted = networks.feature_converter(config)(task.get_dataset(LENGTHS, split="train", shuffle=False), LENGTHS)
    batch = next(converted.batch(4).as_numpy_iterator())
    optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
    model = t5x_model.PaliModel(pali.Pali(config), with_img, with_img, optimizer, decode_fn=decoding.temperature_sample)
    shapes = {k: v.shape for k, v in batch.items()}
    types = {k: v.dtype for k, v in batch.items()}
    params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes, types))(jax.random.PRNGKey(0))["params"]
    loss, _ = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
    assert np.isfinite(loss) and loss > 0
    greedy = {"temperature": 0.0, "eos_id": with_img.vocab_size + 1}  # no EOS: every position decoded
    decodes, _ = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, decoder_params=greedy))(params, batch)
    assert np.asarray(decodes).shape == (4, LENGTHS["targets"])
    decodes = [_until_eos(row) for row in np.asarray(decodes)]  # (as seqio's decode reads them)
    # Decoded text parses back to the ids' codes: code k is id SHIPPED_PIECES + 1 + k.
    for row in decodes:
        ids = [int(i) for i in row if SHIPPED_PIECES < i <= SHIPPED_PIECES + 1024]
        assert image_codes.parse_code_text(with_img.decode(row)) == [i - SHIPPED_PIECES - 1 for i in ids]
    targets = [with_img.decode([int(i) for i in row if i > 1]) for row in batch["decoder_target_tokens"]]
    assert all(t.startswith("<img><img") for t in targets)
    metric, _ = kinds.get("prefix_image").metric_fns("en")
    predictions = [with_img.decode(row) for row in decodes]
    expected = _id_accuracy(batch["decoder_target_tokens"], decodes)
    assert metric(targets, predictions)["code_accuracy"] == pytest.approx(expected)


def _until_eos(row):
    ids = [int(i) for i in row]
    return ids[:ids.index(1)] if 1 in ids else ids


def _id_accuracy(target_ids, predicted_ids):
    """Code accuracy computed on ids: the codes of each row (ids after <img>), compared position by position."""
    hits = total = 0
    for target, predicted in zip(target_ids, predicted_ids):
        wanted = [i for i in target if SHIPPED_PIECES < i <= SHIPPED_PIECES + 1024]
        found = [i for i in predicted if SHIPPED_PIECES < i <= SHIPPED_PIECES + 1024]
        hits += sum(w == f for w, f in zip(wanted, found))
        total += len(wanted)
    return 100.0 * hits / total


def test_image_tokenizer_decodes_code_texts_to_the_models_pixels(tokenizer_dir):
    from palimix import image_codes, image_tokenizer

    directory, cfg, params = tokenizer_dir
    tokenizer = image_tokenizer.load(str(directory))
    n = cfg.grid_size ** 2
    whole = [i % cfg.codebook_size for i in range(n)]
    texts = [image_codes.to_code_text(whole), image_codes.to_code_text(whole[:3]) + " tail", "no codes"]
    decoded = tokenizer.decode_texts(texts)
    assert decoded.pixels.shape == (3, 32, 32, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.complete.tolist() == [True, False, False]
    model = vqgan.Vqgan(cfg)
    grid = np.asarray(whole, np.int32).reshape(1, cfg.grid_size, cfg.grid_size)
    expected = np.asarray(model.apply({"params": params}, grid, method=model.decode))[0]
    np.testing.assert_array_equal(decoded.pixels[0], np.clip(np.round((expected + 1) * 127.5), 0, 255).astype(np.uint8))
    short = np.zeros(n, np.int32)
    short[:3] = whole[:3]  # A short text is filled with code 0.
    np.testing.assert_array_equal(tokenizer.grids_of_texts([texts[1]])[0].reshape(-1), short)
