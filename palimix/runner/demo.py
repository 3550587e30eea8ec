"""`palimix demo`: train a tiny PaLI on `palimix_demo`, evaluate it against trivial
baselines per kind, and leave TensorBoard logs and an HTML report.

`--recipe` (alias `--model`) picks what trains: `tiny` (the encoder-decoder, default),
`tiny_decoder` (the decoder-only prefix LM), `mblip` (a Q-Former and LoRA over a frozen
int8 LM). `RECIPES` holds each as stages (`Stage`: the network from a configs name or
gin files, the trainable selection, the kinds trained, steps, batch, learning rate,
warmup); each stage is one `palimix train` run warm-started from the previous one's
(`--init_format palimix`); the last is evaluated, on the kinds it trained (every kind
for the one-stage recipes): same tasks, lengths, evaluation for all.

Baselines (each kind's `baseline` in palimix.kinds; scored with the same tasks'
metrics as the model):
  caption, vqa, ocr, classification, detection: the most frequent target of that
    language in the evaluated examples, for every example (a constant caption, the
    most frequent answer or label, one box);
  span_corruption, prefix_lm, text_to_image: the most frequent target of the whole
    task (their targets are nearly all distinct: with ~2-4 examples per language, a
    per-language "most frequent" would be one of the answers themselves); for
    text_to_image one scene's codes, drawn and scored for faithfulness as the model's;
  translation: the source sentence copied unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import os
import time


# Report languages, chosen to show several scripts.
SHOWCASE_LANGUAGES = ("en", "de", "ru", "el", "ar", "hi", "th", "zh", "ja", "sw")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of a recipe. Its network and trainable parameters come from
    `model` (a palimix.models.configs name) or from gin files and bindings parsed as
    `palimix train --gin_file/--gin` parses them (gin's `configs.get` and `ParamSelection`
    bindings); `trainable`/`frozen` (regexes, palimix.models.trainable) replace gin's
    selection. It trains on the demo kinds `kinds` (all of palimix_demo's when empty),
    at their palimix_demo rates. A stage after the first starts from the previous
    stage's run (`--init_format palimix`: every parameter both have; LoRA adapters fresh;
    a float LM quantized for an int8 network)."""

    name: str
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    model: str | None = None
    gin_files: tuple = ()
    gin_bindings: tuple = ()
    kinds: tuple = ()
    trainable: tuple | None = None
    frozen: tuple | None = None

    def selection(self):
        """The stage's ParamSelection, or None for gin's."""
        if self.trainable is None and self.frozen is None:
            return None
        from palimix.models.trainable import ParamSelection

        return ParamSelection(trainable=self.trainable or (".*",), frozen=self.frozen or ())


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the demo trains: its stages, run in order; the last one is the evaluated run
    (in --model_dir; the earlier ones in --model_dir/stages/<name>)."""

    stages: tuple
    description: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]


# The demo kinds with images (mBLIP's instruction kinds) and those without.
IMAGE_KINDS = ("caption", "vqa", "ocr", "classification", "detection")
TEXT_KINDS = ("translation", "span_corruption", "prefix_lm")

# mBLIP at demo size: sizes/tiny.gin (ViT tiny/16: 16 tokens of width 64; a 2+2-layer
# width-64 LM) with a small Q-Former (its default is BLIP-2's 12 layers of 768).
MBLIP_QFORMER = ("configs.get.bridge = 'qformer'", "configs.get.qformer_num_queries = 16",
                 "configs.get.qformer_depth = 2", "configs.get.qformer_width = 64", "configs.get.qformer_cross_attention_every = 1",
                 "configs.get.qformer_num_heads = 4", "configs.get.qformer_mlp_dim = 128",
                 "configs.get.qformer_init_std = None")


def _mblip_stage(name: str, run_file: str | None, **training) -> Stage:
    files = ("models/network.gin",) + ((run_file,) if run_file else ()) + ("sizes/tiny.gin",)
    return Stage(name, gin_files=files, gin_bindings=MBLIP_QFORMER, **training)


# The demo's recipes (each beats every evaluated kind's baseline in under 600 s on 2 CPU
# cores). Measured 2026-12-05 with the 8 kinds: the encoder-decoder at 2000 steps beat
# all 8 (431 s, another job on the cores); the decoder-only network at learning rate 0.01
# beat 7 (classification 43.3 vs 45.3) and at 0.02 all 8 (458 s, quiet cores). It starts
# to use the image later than the encoder-decoder (loss on real vs shuffled images), so it
# gets the higher rate.
RECIPES = {
    "tiny": Recipe((Stage("train", 2000, 32, 0.01, 150, model="tiny"),),
                   "the encoder-decoder (ViT + mT5-style), every parameter trains"),
    "tiny_decoder": Recipe((Stage("train", 2000, 32, 0.02, 150, model="tiny_decoder"),),
                           "the decoder-only network (ViT + Gemma-style), every parameter trains"),
    # mBLIP (Geigle et al. 2023) aligns pretrained towers it keeps frozen; none ship at
    # demo size, so the recipe pretrains them: (1) the whole Q-Former model on the demo's
    # image and text kinds; (2) warm-up: only the Q-Former's language_projection trains
    # (runs/mblip_warmup.gin); (3) instruct: the Q-Former, projection and LoRA on all seven
    # LM projections train on the image kinds, the ViT frozen, the LM frozen in int8
    # (runs/mblip_instruct.gin). Measured 2026-12-05: with a random frozen ViT and an LM
    # pretrained on the text kinds alone (600 + 200 + 1200 steps) every image kind stayed
    # below its baseline (the LM had never produced <loc> tokens or answered a prompt);
    # with BLIP-2's 0.02 init and one cross-attention layer 3 of 5 stayed below (the
    # Q-Former hardly passed the image on); with the fan-in init and cross-attention in
    # both layers, 1000 + 100 + 900 steps beat 4 (classification 38.0 vs 45.3) and these
    # 1500 + 100 + 1400 steps all 5 (372 s on quiet cores).
    "mblip": Recipe((
        _mblip_stage("pretrain", None, steps=1500, batch_size=32, learning_rate=0.01, warmup_steps=150,
                     kinds=IMAGE_KINDS + TEXT_KINDS),
        _mblip_stage("warmup", "runs/mblip_warmup.gin", steps=100, batch_size=32, learning_rate=0.01,
                     warmup_steps=10, kinds=IMAGE_KINDS),
        _mblip_stage("instruct", "runs/mblip_instruct.gin", steps=1400, batch_size=32, learning_rate=0.01,
                     warmup_steps=50, kinds=IMAGE_KINDS),
    ), "mBLIP: a Q-Former and LoRA align a frozen ViT to a pretrained, frozen int8 LM"),
}
DEFAULT_RECIPE = "tiny"


@dataclasses.dataclass
class DemoSettings:
    """A demo run; the training fields left None take the recipe's (every stage's)."""

    model_dir: str | None = None  # None: palimix_runs/demo (the default recipe), else palimix_runs/demo_<recipe>
    recipe_name: str = DEFAULT_RECIPE
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    eval_examples_per_task: int | None = None  # None: every validation example
    # Kinds to evaluate (default: those the recipe's last stage trains on).
    kinds: tuple = ()
    seed: int = 0
    progress: bool = True

    def recipe(self) -> Recipe:
        """The recipe with this run's explicit values in place (in every stage)."""
        if self.recipe_name not in RECIPES:
            from palimix.errors import UsageError, close_matches_hint

            raise UsageError(f"the demo trains one of the recipes {', '.join(RECIPES)}, not {self.recipe_name!r}."
                             + close_matches_hint(self.recipe_name, RECIPES))
        given = {name: getattr(self, name) for name in ("steps", "batch_size", "learning_rate", "warmup_steps")
                 if getattr(self, name) is not None}
        recipe = RECIPES[self.recipe_name]
        return dataclasses.replace(recipe, stages=tuple(dataclasses.replace(s, **given) for s in recipe.stages))

    def run_dir(self) -> str:
        if self.model_dir:
            return self.model_dir
        return "palimix_runs/demo" if self.recipe_name == DEFAULT_RECIPE else f"palimix_runs/demo_{self.recipe_name}"


def baseline_text(kind: str, example: dict, most_frequent: str) -> str:
    """The kind's trivial answer to `example` (palimix.kinds' `baseline`)."""
    from palimix import kinds

    if kinds.get(kind).baseline == kinds.COPY_SOURCE:
        # The source text follows the prompt's first ": " ("translate en de: <text>").
        source = _text(example.get("inputs_pretokenized", b""))
        return source.split(": ", 1)[1] if ": " in source else source
    return most_frequent


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def baseline_predictor(evaluation, targets_length: int):
    """A `predict_fn` for `Evaluation.score` that answers with each task's baseline
    (for the image kinds the most frequent target is counted per language: a
    multilingual task's languages each get their own)."""
    def predict(task, indexed):
        raw = evaluation.raw_examples(task.name)
        from palimix import kinds

        _, kind = evaluation.task_info[task.name]
        per_language = kinds.get(kind).baseline == kinds.MOST_FREQUENT_PER_LANGUAGE

        def group(example) -> str:
            return _text(example.get("language", b"")) if per_language else ""

        by_language = collections.defaultdict(collections.Counter)
        for ex in raw:
            by_language[group(ex)][_text(ex.get("targets_pretokenized", b""))] += 1
        most_frequent = {lang: counts.most_common(1)[0][0] for lang, counts in by_language.items()}
        vocabulary = task.output_features["targets"].vocabulary
        rows = []
        for index, _ in indexed:
            example = raw[int(index)]
            answer = baseline_text(kind, example, most_frequent[group(example)])
            ids = list(vocabulary.encode(answer))[:targets_length - 1]
            ids.append(vocabulary.eos_id)
            rows.append(ids + [0] * (targets_length - len(ids)))
        return rows

    return predict


def run_demo(settings: DemoSettings) -> dict:
    """Trains (or resumes) the recipe's stages, evaluates the last, writes the report;
    returns the summary dict."""
    start = time.perf_counter()
    recipe, model_dir = settings.recipe(), settings.run_dir()
    eval_kinds = tuple(settings.kinds or recipe.final.kinds)
    _check_kinds(eval_kinds)
    stages = train_stages(recipe, model_dir, seed=settings.seed, progress=settings.progress)
    train_seconds = time.perf_counter() - start
    result = evaluate_run(model_dir, eval_kinds, eval_examples=settings.eval_examples_per_task,
                          name=settings.recipe_name, trained=describe_stages(stages))
    summary = {"kinds": result["kinds"], "languages": result["languages"],
               "seconds": round(time.perf_counter() - start, 1)}
    details = {"model": settings.recipe_name, "recipe": settings.recipe_name, "stages": stages,
               "train_seconds": round(train_seconds, 1), "train_steps_per_s": stages[-1]["steps_per_s"],
               "input_wait_share": stages[-1]["input_wait_share"], **result["details"]}
    with open(os.path.join(model_dir, "demo.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, **details}, f, indent=1)
    return {**summary, "_details": details}


def _check_kinds(kinds: tuple) -> None:
    from palimix.tasks import demo as demo_tasks

    unknown = sorted(set(kinds) - set(demo_tasks.KIND_MIXTURES))
    if unknown:
        from palimix.errors import UsageError, close_matches_hint

        raise UsageError(f"unknown demo kind(s) {unknown}; kinds: {', '.join(demo_tasks.KIND_MIXTURES)}."
                         + close_matches_hint(unknown[0], demo_tasks.KIND_MIXTURES))


def evaluate_run(model_dir: str, kinds: tuple, *, eval_examples: int | None, name: str, trained: str = "") -> dict:
    """Scores the run in `model_dir` and the baselines on the validation split of `kinds`
    (every demo kind when empty), writes report.html; returns {"kinds": {kind: {"metric",
    "baseline", "model"}}, "languages": N, "details": {...}}."""
    from palimix.runner import eval as eval_lib
    from palimix.runner import loading
    from palimix.runner.summaries import Summaries
    from palimix.tasks import demo as demo_tasks

    run = loading.load_run(model_dir, batch_size=1)
    lengths = dict(demo_tasks.TASK_FEATURE_LENGTHS)
    eval_name = _eval_mixture([demo_tasks.KIND_MIXTURES[k] for k in kinds]) if kinds else demo_tasks.MIXTURE
    evaluation = eval_lib.Evaluation(eval_name, lengths, converter=run.feature_converter(), split="validation",
                                     num_examples=eval_examples,
                                     num_shown=len(SHOWCASE_LANGUAGES), prefer_languages=SHOWCASE_LANGUAGES)
    summaries = Summaries(model_dir)
    try:
        model = eval_lib.evaluate(run, evaluation=evaluation, batch_size=min(32, eval_examples or 32),
                                  summaries=summaries)
        baseline = evaluation.score(baseline_predictor(evaluation, lengths["targets"]), step=run.step)
    finally:
        summaries.close()

    scores = {}
    for kind, metrics in model.macro.items():
        metric = demo_primary_metric(kind, metrics)
        scores[kind] = {"metric": metric, "baseline": round(baseline.macro.get(kind, {}).get(metric, 0.0), 2),
                        "model": round(metrics.get(metric, 0.0), 2)}
    report_path = os.path.join(model_dir, "report.html")
    write_report(report_path, evaluation, model, baseline, scores, steps=run.step, model_name=name, trained=trained)
    share = trainable_share(run)
    details = {"trainable_share": round(share["share"], 4), "params": share["params"],
               "trainable_params": share["trainable"], "step": run.step, "eval_seconds": round(model.seconds, 1),
               "baseline_seconds": round(baseline.seconds, 1), "report": report_path, "metrics": model.output_path,
               "tensorboard": model_dir}
    return {"kinds": scores, "languages": model.languages, "details": details}


def stage_dir(model_dir: str, recipe: Recipe, stage: Stage) -> str:
    """The last stage trains in model_dir (the run `palimix eval/infer` read), the others
    in model_dir/stages/<name>."""
    return model_dir if stage is recipe.final else os.path.join(model_dir, "stages", stage.name)


def train_stages(recipe: Recipe, model_dir: str, *, seed: int, progress: bool,
                 start_from: str | None = None) -> list[dict]:
    """Trains each stage in order (resumed, or skipped when finished), each warm-started
    from the previous one's run (the first from the palimix run `start_from`, if given);
    returns what each did."""
    import sys

    import gin

    from palimix.runner import config as config_lib
    from palimix.runner import train as train_lib

    done, previous = [], start_from
    try:
        for number, stage in enumerate(recipe.stages, 1):
            if progress:
                print(f"stage {number}/{len(recipe.stages)}: {stage.name} ({', '.join(stage.kinds) or 'every kind'})",
                      file=sys.stderr, flush=True)
            gin.clear_config()  # Each stage's network is its own gin files' (none: its `model`).
            config_lib.parse_gin(stage.gin_files, stage.gin_bindings)
            config = _stage_config(stage, stage_dir(model_dir, recipe, stage), previous, seed, progress)
            started = time.perf_counter()
            result = train_lib.train(config)
            done.append({"name": stage.name, "kinds": list(stage.kinds), "steps": result.step,
                         "seconds": round(time.perf_counter() - started, 1),
                         "steps_per_s": round(result.steps_per_s, 2),
                         "input_wait_share": round(result.input_wait_share, 3), "model_dir": config.model_dir})
            previous = config.model_dir
    finally:
        gin.clear_config()
    return done


def _stage_config(stage: Stage, run_dir: str, previous: str | None, seed: int, progress: bool):
    from palimix.runner import train as train_lib
    from palimix.tasks import demo as demo_tasks

    return train_lib.TrainConfig(
        mixture_or_task_name=_training_mixture(stage.kinds), model_dir=run_dir,
        task_feature_lengths=dict(demo_tasks.TASK_FEATURE_LENGTHS), model=stage.model, trainable=stage.selection(),
        batch_size=stage.batch_size, train_steps=stage.steps, learning_rate=stage.learning_rate,
        warmup_steps=min(stage.warmup_steps, max(1, stage.steps // 5)), seed=seed,
        checkpoint_every=max(1, min(500, stage.steps)), log_every=max(1, min(50, stage.steps // 10)),
        progress=progress, init_checkpoint=previous, init_format="palimix" if previous else None)


def _training_mixture(kinds: tuple) -> str:
    """palimix_demo, or a mixture of the kinds' sub-mixtures at their palimix_demo rates
    (registered once per choice)."""
    import seqio

    from palimix.mixtures import add_mixture
    from palimix.tasks import demo as demo_tasks

    if not kinds:
        return demo_tasks.MIXTURE
    name = f"{demo_tasks.MIXTURE}_train_" + "_".join(kinds)
    if name not in seqio.MixtureRegistry.names():
        add_mixture(name, [demo_tasks.KIND_MIXTURES[k] for k in kinds],
                    rate={demo_tasks.KIND_MIXTURES[k]: demo_tasks.KIND_RATES[k] for k in kinds})
    return name


def trainable_share(run) -> dict:
    """{"params", "trainable", "share"}: the parameters of a loaded run and how many of
    them its trainable selection trains."""
    import jax

    sizes = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: int(x.size), run.params))
    trains = jax.tree_util.tree_leaves(run.trainer.definition.trainable.mask(run.params))
    total, trainable = sum(sizes), sum(size for size, t in zip(sizes, trains) if t)
    return {"params": total, "trainable": trainable, "share": trainable / total}


def describe_stages(stages: list[dict]) -> str:
    """One line: each stage, its steps and the kinds it trained (none listed: every kind)."""
    return "; ".join(f"{s['name']}: {s['steps']} steps on {', '.join(s['kinds']) or 'every kind'}" for s in stages)


def demo_primary_metric(kind: str, metrics: dict) -> str | None:
    """The demo's headline metric of a kind (palimix.tasks.demo.PRIMARY_METRICS, else the kind's)."""
    from palimix.runner import eval as eval_lib
    from palimix.tasks import demo as demo_tasks

    wanted = demo_tasks.PRIMARY_METRICS.get(kind)
    return wanted if wanted in metrics else eval_lib.primary_metric(kind, metrics)


def _eval_mixture(kind_mixtures: list[str]) -> str:
    """A mixture of the chosen kinds' sub-mixtures (registered once per choice)."""
    import seqio

    name = "palimix_demo_eval_" + "_".join(sorted(m.rsplit("palimix_demo_", 1)[-1] for m in kind_mixtures))
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [(m, 1.0) for m in kind_mixtures])
    return name


def format_table(summary: dict) -> str:
    rows = [("kind", "metric", "baseline", "model", "")]
    for kind, row in summary["kinds"].items():
        verdict = "beats baseline" if row["model"] > row["baseline"] else "below baseline"
        rows.append((kind, row["metric"], f"{row['baseline']:.2f}", f"{row['model']:.2f}", verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(path: str, evaluation, model, baseline, kinds: dict, *, steps: int, model_name: str,
                 trained: str = "") -> None:
    """A self-contained HTML page: the score table, then example images with their
    prompt, reference, baseline and model prediction, in several languages and scripts."""
    from palimix import features
    from palimix.report_images import png_data_uri

    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>palimix demo</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{image-rendering:pixelated}"
        ".ok{color:#070}.bad{color:#a00}</style></head><body>",
        f"<h1>palimix demo: {e(model_name)} after {steps} steps</h1>",
        f"<p>Trained: {e(trained)}.</p>" if trained else "",
        f"<p>{model.languages} languages evaluated, {len(model.tasks)} tasks.</p>",
        "<table><tr><th>kind</th><th>metric</th><th>baseline</th><th>model</th></tr>",
    ]
    for kind, row in kinds.items():
        cls = "ok" if row["model"] > row["baseline"] else "bad"
        parts.append(f"<tr><td>{e(kind)}</td><td>{e(str(row['metric']))}</td><td>{row['baseline']:.2f}</td>"
                     f"<td class='{cls}'>{row['model']:.2f}</td></tr>")
    parts.append("</table><h2>Examples</h2><table><tr><th>task</th><th>image</th><th>prompt</th>"
                 "<th>reference</th><th>baseline</th><th>model</th></tr>")
    for task_name, shown in model.examples.items():
        raw = evaluation.raw_examples(task_name)
        baseline_by_index = {row["index"]: row["prediction"] for row in baseline.examples.get(task_name, [])}
        generates_images = evaluation.task_info[task_name][1] == "text_to_image"
        for row in shown:
            example, language = raw[row["index"]], row["language"]
            has_image = features.has_real_image(example) and "image" in example
            image = f"<img src='{png_data_uri(example['image'], size=128)}' width=96>" if has_image else "(text only)"
            cells = [e(row["target"]), e(baseline_by_index.get(row["index"], "")), f"<b>{e(row['prediction'])}</b>"]
            if generates_images:  # the real image, then the baseline's and the model's drawn
                image, *cells = text_to_image_cells(example, evaluation.split,
                                                    [baseline_by_index.get(row["index"], ""), row["prediction"]])
            parts.append(
                f"<tr><td>{e(task_name)}</td><td>{image}</td><td lang='{e(language)}' dir='auto'>"
                f"{e(row['input'])}</td><td lang='{e(language)}' dir='auto'>{cells[0]}</td>"
                f"<td dir='auto'>{cells[1]}</td><td lang='{e(language)}' dir='auto'>{cells[2]}</td></tr>")
    parts.append("</table></body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def text_to_image_cells(example, split: str, predictions: list[str]) -> list[str]:
    """A text_to_image row's cells: the real image, the scene its prompt asks for (the
    reference), then each prediction's codes drawn by the demo tokenizer with the scene
    read from it (palimix.metrics.scene)."""
    import numpy as np
    from PIL import Image

    from palimix.metrics import scene
    from palimix.report_images import pixels_data_uri
    from palimix.tasks import demo as demo_tasks

    record = demo_tasks.text_to_image_records(split)[_text(example["id"])]
    with Image.open(os.path.join(demo_tasks.data_dir(), record["image"])) as picture:
        real = np.asarray(picture.convert("RGB"))
    decoded = demo_tasks.image_tokenizer().decode_texts(predictions)

    def cell(pixels, described: scene.Scene) -> str:
        words = " ".join(str(getattr(described, a) or "?") for a in scene.ATTRIBUTES)
        return f"<img src='{pixels_data_uri(pixels, size=128)}' width=96><br>{html.escape(words)}"

    wanted = scene.Scene(**record["scene"])
    return [cell(real, wanted), html.escape(" ".join(record["scene"][a] for a in scene.ATTRIBUTES)),
            *[cell(pixels, scene.read_scene(pixels)) for pixels in decoded.pixels]]
