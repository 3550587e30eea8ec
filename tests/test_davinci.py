"""DaVinci end to end on tiny sizes: captioned PNG images, their codes from `palimix
encode-images` (a tokenizer written in train-tokenizer's layout), `runs/davinci.gin` (caption
+ text_to_image + prefix_image at equal rates) through `palimix train` for both backbones and
through `python -m t5x.train`, then `palimix infer --generate` writing PNG images (sampling,
guidance, several samples, JSON Lines requests) and its errors."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio
from flax import serialization
from PIL import Image

from palimix import cli, image_codes, image_tokenizer
from palimix.errors import UsageError
from palimix.models import vqgan
from tests.runner_env import clean_gin, runner_environment  # noqa: F401  (autouse fixtures)
from tests.vocab_cache import vocab_cache_dir  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("vocab_cache_dir")]

TOKENIZER_SIZE = 16  # tiny VQGAN, stride 4: a 4x4 grid, 16 codes
TARGETS = 4 * 4 + 2  # <img>, 16 codes, EOS
LENGTHS = f"inputs=16,targets={TARGETS},image=32"
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
STEPS = 3


def _write_tokenizer(out, image_size=TOKENIZER_SIZE):
    cfg = vqgan.config("tiny", image_size=image_size, codebook_size=32)
    params = vqgan.init_params(cfg, jax.random.PRNGKey(3))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    (out / "tokenizer.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}))
    return out


def _write_split(root, split, count):
    """Captioned PNG images of a coloured square, as JSON Lines, then their codes."""
    lines = []
    for i in range(count):
        color = list(COLORS)[i % len(COLORS)]
        pixels = np.full((24, 24, 3), 128, np.uint8)
        pixels[4 + i % 8:14 + i % 8, 6:16] = COLORS[color]
        Image.fromarray(pixels).save(root / "images" / f"{split}{i}.png")
        lines.append({"id": f"{split}{i}", "language": "en", "image": f"{split}{i}.png",
                      "captions": [f"a {color} square"]})
    raw = root / f"{split}_raw.jsonl"
    raw.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = root / f"{split}.jsonl"
    assert cli.main(["encode-images", str(raw), "--tokenizer", str(root / "tokenizer"), "--out", str(out),
                     "--image_dir", str(root / "images")]) == 0
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("davinci")
    (root / "images").mkdir()
    _write_tokenizer(root / "tokenizer")
    files = {split: str(_write_split(root, split, n)) for split, n in (("train", 12), ("validation", 3))}
    return root, files


def _gin_args(root, files, size):
    return ["--gin_file", "runs/davinci.gin", "--gin_file", f"sizes/{size}.gin", "--gin", "IMAGE_SIZE = 32",
            "--gin", f"DAVINCI_FILES = {files!r}", "--gin", f"DAVINCI_IMAGE_DIR = '{root / 'images'}'"]


@pytest.fixture(scope="module", params=["tiny", "tiny_decoder"])
def trained(request, data):
    root, files = data
    run_dir = root / f"run_{request.param}"
    args = ["train", "--model_dir", str(run_dir), "--batch_size", "4", "--steps", str(STEPS), "--lengths", LENGTHS,
            "--warmup_steps", "1", "--no_progress", *_gin_args(root, files, request.param)]
    assert cli.main(args) == 0
    return root, files, run_dir


def _infer(root, files, run_dir, *args):
    """`palimix infer` with the run's gin files, which register its mixture (the tasks' vocabulary)."""
    size = json.loads((run_dir / "run.json").read_text())["model"]["name"]
    return cli.main(["infer", "--model_dir", str(run_dir), *_gin_args(root, files, size), *args])


def test_the_davinci_mixture_holds_the_three_kinds_at_equal_rates(trained):
    from palimix.runner.loading import load_run

    root, _, run_dir = trained
    run = load_run(str(run_dir))
    assert run.mixture_or_task_name == "davinci"
    assert run.trainer.definition.config.vocab_size == 9344
    mixture = seqio.get_mixture_or_task("davinci")
    names = sorted(task.name for task in mixture.tasks)
    assert names == ["davinci_caption_en", "davinci_prefix_image_en", "davinci_text_to_image_en"]
    assert {mixture.get_rate(entry) for entry in mixture._sub_mixtures or mixture.tasks} == {1.0}
    example = next(iter(seqio.get_mixture_or_task("davinci_text_to_image_en").get_dataset(
        {"inputs": 16, "targets": TARGETS, "image": 32}, split="validation", shuffle=False).as_numpy_iterator()))
    line = json.loads(open(root / "validation.jsonl").readline())
    assert example["inputs_pretokenized"] == f"generate en {line['captions'][0]}".encode()
    assert example["targets_pretokenized"].decode() == image_codes.to_code_text(line["codes"])
    # DAVINCI_UNCONDITIONAL_SHARE = 0.1: the train examples whose id hashes below 0.1 (train11 of these
    # 12) are prompted without their description, for guidance.
    train = seqio.get_mixture_or_task("davinci_text_to_image_en").get_dataset(
        {"inputs": 16, "targets": TARGETS, "image": 32}, split="train", shuffle=False).as_numpy_iterator()
    dropped = sorted(ex["id"].decode() for ex in train if ex["inputs_pretokenized"] == b"generate en")
    assert dropped == ["train11"]


def test_generate_writes_the_tokenizers_image_of_the_sampled_codes(trained, tmp_path, capsys):
    root, files, run_dir = trained
    out, record = tmp_path / "circle.png", tmp_path / "images.jsonl"
    assert _infer(root, files, run_dir, "--generate", "a red square", "--tokenizer", str(root / "tokenizer"),
                  "--out", str(out), "--output", str(record), "--top_k", "50", "--seed", "1") == 0
    printed = capsys.readouterr().out
    assert f"{out}: 'generate en a red square' (4x4 codes" in printed
    (written,) = [json.loads(line) for line in record.read_text().splitlines()]
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (TOKENIZER_SIZE, TOKENIZER_SIZE, 3)
    # The PNG is the tokenizer's drawing of the sampled text, and the counts are the text's.
    tokenizer = image_tokenizer.load(str(root / "tokenizer"))
    decoded = tokenizer.decode_texts([written["text"]])
    np.testing.assert_array_equal(pixels, decoded.pixels[0])
    assert written["complete"] == bool(decoded.complete[0])
    assert written["codes"] == min(len(image_codes.parse_code_text(written["text"])), 16)
    # Sampling is restricted to the codebook: every sample is a whole grid, even from 3 steps of training.
    codes = image_codes.parse_code_text(written["text"])
    assert written["complete"] and written["codes"] == 16 and len(codes) == 16
    assert written["text"].startswith("<img>") and max(codes) < 32  # the tokenizer's codebook of 32
    assert "incomplete" not in printed
    again = tmp_path / "again.png"
    assert _infer(root, files, run_dir, "--generate", "a red square", "--tokenizer", str(root / "tokenizer"),
                  "--out", str(again), "--top_k", "50", "--seed", "1") == 0
    assert again.read_bytes() == out.read_bytes()  # same seed, same image


def test_guidance_scale_one_samples_what_plain_sampling_does(trained, tmp_path):
    from palimix.runner import generate, loading

    root, _, run_dir = trained
    tokenizer = image_tokenizer.load(str(root / "tokenizer"))
    run = loading.load_run(str(run_dir), batch_size=2)
    requests = [generate.ImageRequest("a blue square", str(tmp_path / "a.png")),
                generate.ImageRequest("a green square", str(tmp_path / "b.png"))]
    plain = generate.generate_images(run, tokenizer, requests, seed=4)
    guided = generate.generate_images(run, tokenizer, requests, seed=4, guidance_scale=1.0)
    assert [g.text for g in guided] == [p.text for p in plain]
    strong = generate.generate_images(run, tokenizer, requests, seed=4, guidance_scale=5.0, num_samples=2)
    assert [s.out for s in strong] == [str(tmp_path / n) for n in ("a-1.png", "a-2.png", "b-1.png", "b-2.png")]
    assert all((tmp_path / n).exists() for n in ("a-1.png", "a-2.png", "b-1.png", "b-2.png"))
    assert generate.prompts_for(requests[0], "natural") == ("Generate an image of: a blue square",
                                                            "Generate an image of:")


def test_every_guided_or_greedy_sample_is_a_whole_image(trained, tmp_path):
    from palimix.runner import generate, loading

    root, _, run_dir = trained
    tokenizer = image_tokenizer.load(str(root / "tokenizer"))
    run = loading.load_run(str(run_dir), batch_size=4)
    requests = [generate.ImageRequest(f"a {color} square", str(tmp_path / f"{color}.png")) for color in COLORS]
    for options in (dict(seed=3, guidance_scale=4.0, num_samples=2), dict(temperature=0.0)):
        images = generate.generate_images(run, tokenizer, requests, batch_size=4, **options)
        assert all(image.complete and len(image_codes.parse_code_text(image.text)) == 16 for image in images)


def test_training_prompts_without_the_description_are_the_guidance_twins(trained):
    """Condition dropout (text_to_image's unconditional_share) prompts a training example with
    exactly the token ids that guidance's unconditional batch holds."""
    from palimix.runner import generate, infer, loading
    from palimix.sources import JsonLines
    from palimix.tasks import add_task, remove

    root, files, run_dir = trained
    run = loading.load_run(str(run_dir), batch_size=2)
    vocabulary = seqio.get_mixture_or_task("davinci").output_features["inputs"].vocabulary
    source = JsonLines(files["validation"], str(root / "images"), split="validation")
    add_task("uncond_t2i", kind="text_to_image", source=source, languages=["en"], image_size=32,
             vocabulary=vocabulary, unconditional_share=1.0)
    try:
        example = next(iter(seqio.get_mixture_or_task("uncond_t2i_en").get_dataset(
            run.task_feature_lengths, split="validation", shuffle=False).as_numpy_iterator()))
    finally:
        remove("uncond_t2i")
    _, unconditional = generate.prompts_for(generate.ImageRequest("a red square", "x.png"), "pali")
    assert example["inputs_pretokenized"].decode() == unconditional == "generate en"
    np.testing.assert_array_equal(example["inputs"], vocabulary.encode("generate en") + [1])
    blank = np.zeros((32, 32, 3), np.float32)
    trained_prompt = infer.model_features(run, [infer.task_features(example["inputs"], blank, has_image=False)])[0]
    twin = generate.prompt_batch(run, [unconditional], [None])[0]
    for name in run.trainer.network.PREDICT_INPUTS:
        np.testing.assert_array_equal(trained_prompt[name], twin[name])


def test_prefix_completion_keeps_the_images_top_rows(trained, tmp_path):
    from palimix.commands.encode_images import tokenizer_pixels

    root, files, run_dir = trained
    image, out, record = root / "images" / "validation1.png", tmp_path / "done.png", tmp_path / "done.jsonl"
    assert _infer(root, files, run_dir, "--generate", "a green square", "--image", str(image), "--keep_rows", "1",
                  "--tokenizer", str(root / "tokenizer"), "--out", str(out), "--output", str(record)) == 0
    (written,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert written["prompt"] == "complete image en a green square" and written["complete"]
    assert len(image_codes.parse_code_text(written["text"])) == 12  # rows 1..3 of the 4x4 grid
    tokenizer = image_tokenizer.load(str(root / "tokenizer"))
    kept = tokenizer.encode(tokenizer_pixels(str(image), "test", TOKENIZER_SIZE)[None])[0, :1].reshape(-1)
    line = json.loads(open(files["validation"]).readlines()[1])
    assert list(kept) == line["codes"][:4]  # the codes encode-images wrote for the image's top row
    expected = tokenizer.decode_texts([image_codes.to_code_text(kept) + written["text"]]).pixels[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


def test_generate_from_json_lines_requests(trained, tmp_path):
    root, files, run_dir = trained
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"generate": "a red square", "out": "r.png"}) + "\n"
                        + json.dumps({"generate": "ein blaues Quadrat", "language": "de", "out": "b.png", "id": 7})
                        + "\n" + json.dumps({"generate": "a green square", "out": "g.png", "keep_rows": 2,
                                             "image": str(root / "images" / "validation1.png")}) + "\n")
    record = tmp_path / "images.jsonl"
    assert _infer(root, files, run_dir, "--jsonl", str(requests), "--tokenizer", str(root / "tokenizer"),
                  "--guidance_scale", "2", "--temperature", "0", "--output", str(record)) == 0
    assert all((tmp_path / name).exists() for name in ("r.png", "b.png", "g.png"))
    written = [json.loads(line) for line in record.read_text().splitlines()]
    # In request order; the completion samples the 8 codes below its 2 kept rows.
    assert [len(image_codes.parse_code_text(w["text"])) for w in written] == [16, 16, 8]
    assert all(w["complete"] for w in written)


def test_a_grid_longer_than_the_runs_targets_is_refused(trained, tmp_path):
    from palimix.runner import generate, loading

    root, _, run_dir = trained
    bigger = image_tokenizer.load(str(_write_tokenizer(tmp_path / "big", image_size=32)))  # 8x8 codes
    with pytest.raises(UsageError, match=r"targets length is 18; the tokenizer's 8x8 grid needs 66"):
        generate.check_run_for(loading.load_run(str(run_dir)), bigger)


def test_eval_reports_code_perplexity_from_the_targets_log_likelihoods(trained, tmp_path):
    from palimix.runner import eval as eval_lib
    from palimix.runner import loading
    from palimix.runner.predict import Scorer

    root, files, run_dir = trained
    assert cli.main(["eval", "--model_dir", str(run_dir), "--split", "validation", "--batch_size", "4",
                     *_gin_args(root, files, json.loads((run_dir / "run.json").read_text())["model"]["name"])]) == 0
    metrics = json.loads((run_dir / "eval" / "validation" / "metrics.json").read_text())["tasks"]
    assert "code_perplexity" not in metrics["davinci_caption_en"]["metrics"]
    run = loading.load_run(str(run_dir), batch_size=4)
    scorer = Scorer(run, batch_size=4)
    evaluation = eval_lib.Evaluation("davinci_text_to_image_en", run.task_feature_lengths,
                                     converter=run.feature_converter(), split="validation")
    (task,) = evaluation.evaluator.eval_tasks
    features = [f for _, f in sorted(evaluation.evaluator.cached_model_datasets[task.name].as_numpy_iterator(),
                                     key=lambda pair: int(pair[0]))]
    scores = scorer.score_all(features)
    tokens = sum(int(np.sum(f["decoder_loss_weights"])) for f in features)
    assert tokens == len(features) * TARGETS  # <img>, 16 codes and EOS per target
    for name in ("davinci_text_to_image_en", "davinci_prefix_image_en"):
        assert metrics[name]["metrics"]["code_perplexity"] > 1.0
    assert metrics["davinci_text_to_image_en"]["metrics"]["code_perplexity"] == pytest.approx(
        np.exp(-np.sum(scores) / tokens), rel=1e-4)


@pytest.mark.t5x
def test_the_runners_scores_are_t5x_score_batch(trained):
    """The runner's Scorer gives what T5X's `score_batch` gives for the same parameters."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    from t5x import adafactor

    from palimix.models import t5x_decoder_model, t5x_model
    from palimix.runner import loading
    from palimix.runner.predict import Scorer

    _, _, run_dir = trained
    run = loading.load_run(str(run_dir), batch_size=4)
    task = seqio.get_mixture_or_task("davinci_prefix_image_en")
    dataset = task.get_dataset(run.task_feature_lengths, split="validation", shuffle=False)
    batch = next(run.feature_converter()(dataset, run.task_feature_lengths).batch(3).as_numpy_iterator())
    network = run.trainer.network
    vocabulary = task.output_features["targets"].vocabulary
    optimizer = adafactor.Adafactor(logical_factor_rules=t5x_model.pali_logical_factor_rules())
    model_class = t5x_model.PaliModel if hasattr(network, "encode") else t5x_decoder_model.PaliGemmaModel
    model = (model_class(network, vocabulary, vocabulary, optimizer) if model_class is t5x_model.PaliModel
             else model_class(network, vocabulary, optimizer))
    expected = np.asarray(model.score_batch(run.params, batch))
    np.testing.assert_allclose(Scorer(run, batch_size=4).score(batch), expected, rtol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--generate", "a red square", "--out", "x.png"], "give --tokenizer DIR"),
    (["--generate", "a red square", "--tokenizer", "t"], "--generate needs --out PATH.png"),
    (["--tokenizer", "t"], "give either --generate DESCRIPTION --out PNG, or --jsonl FILE"),
    (["--generate", "a", "--tokenizer", "t", "--out", "x.png", "--kind", "caption"], "drop --prompt and --kind"),
    (["--generate", "a", "--tokenizer", "t", "--out", "x.png", "--image", "y.png"],
     "takes both --image PATH and --keep_rows K"),
])
def test_generate_flags_are_checked(tmp_path, capsys, args, message):
    assert cli.main(["infer", "--model_dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_incomplete_images_are_counted_in_one_warning(caplog):
    from palimix.runner import generate

    images = [generate.GeneratedImage("1", "p", "a.png", 16, True, ""),
              generate.GeneratedImage("2", "p", "b.png", 3, False, "")]
    with caplog.at_level("WARNING", logger="palimix.runner.generate"):
        generate._warn_incomplete(images, 16)
    assert "1 of 2 generated images are incomplete (fewer than 16 drawable codes" in caplog.text
    assert "b.png (3 codes)" in caplog.text


@pytest.mark.t5x
def test_t5x_train_reads_the_davinci_run(data, tmp_path):
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]'); this test runs its binary")
    from palimix.commands.gin_path import gin_dir
    from palimix.models.checkpoints import read_t5x_checkpoint

    root, files = data
    model_dir = tmp_path / "model"
    bindings = [f"DAVINCI_FILES={files!r}", f"DAVINCI_IMAGE_DIR='{root / 'images'}'", "IMAGE_SIZE=32",
                f"TASK_FEATURE_LENGTHS={{'inputs': 16, 'targets': {TARGETS}, 'image': 32}}",
                f"TRAIN_STEPS={STEPS}", "BATCH_SIZE=4", f"MODEL_DIR='{model_dir}'", f"CHECKPOINT_PERIOD={STEPS}",
                f"EVAL_PERIOD={STEPS}", "EVAL_STEPS=1", "WARMUP_STEPS=1"]
    command = [sys.executable, "-m", "t5x.train", f"--gin_search_paths={gin_dir()}",
               "--gin_file=models/pali.gin", "--gin_file=runs/pretrain.gin", "--gin_file=runs/davinci.gin",
               "--gin_file=sizes/tiny.gin", *(f"--gin.{b.replace(' ', '')}" for b in bindings)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    after = read_t5x_checkpoint(str(model_dir), STEPS)
    assert any(9344 in np.shape(v) for v in after.values())  # the vocabulary with the <img> tokens
