"""`register_benchmarks(data_dir)`: the standard PaLI benchmarks, for the data a user has.

Expected layout under `data_dir` (each benchmark is registered when its files exist,
in the layout its release unpacks to; the others are skipped with a log line):

    coco/annotations/captions_{train,val}2017.json, coco/{train,val}2017/*.jpg
        -> coco_captions (en; splits train, validation)
    xm3600/captions.jsonl, xm3600/images/<key>.jpg
        -> xm3600 (36 languages; split test)
    vqav2/v2_OpenEnded_mscoco_{train,val}2014_questions.json,
    vqav2/v2_mscoco_{train,val}2014_annotations.json, coco/{train,val}2014/*.jpg
        -> vqav2 (en; splits train, validation)
    textvqa/TextVQA_0.5.1_{train,val}.json, textvqa/train_images/<image_id>.jpg
        -> textvqa (en; splits train, validation)
    xgqa/zero_shot/*_<lang>.json, gqa/images/<image_id>.jpg
        -> xgqa (8 languages; split test)
    coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/*.jpg
        -> coco_detection (detection, en; splits train, validation)
    refcoco/refs(unc).p, refcoco/instances.json, coco/train2014/*.jpg
        -> refcoco (referring, en; splits train, validation, testA, testB)
    refcoco+/refs(unc).p, refcoco+/instances.json, coco/train2014/*.jpg
        -> refcoco_plus (referring, en; splits train, validation, testA, testB)
    refcocog/refs(umd).p, refcocog/instances.json, coco/train2014/*.jpg
        -> refcocog (referring, en; UMD splits train, validation, test)

mBLIP's multilingual benchmarks (IGLUE's `datasets/` folders, MaXM's release):

    xflickrco/annotations/<lang>/test.jsonl, flickr30k/images/<id>.jpg, coco/val2014/*.jpg
        -> xflickrco (caption, 8 languages; split test)
    xvnli/annotations/<lang>/test.jsonl, flickr30k/images/<Flikr30kID>.jpg
        -> xvnli (yes/no/maybe answers in English, accuracy; 5 languages; split test)
    marvl/zero_shot/annotations/marvl-<lang>.jsonl, marvl/images/<lang>/images/<concept>/*
        -> marvl (yes/no answers in English to an image PAIR composed side by side,
           accuracy; 5 languages; split test)
    maxm/maxm_v1_release/maxm_v1_<lang>.json, xm3600/images/<image_id>.jpg
        -> maxm (vqa, exact match against any processed answer; 7 languages; split test)

(the RefCOCO folders as the `refer` release unpacks them). Each benchmark becomes one
task per language and a mixture (palimix.tasks.add_task). The box benchmarks need a
vocabulary with single-id <loc> tokens: `vocabulary`, or by default
`palimix.vocab.default_vocabulary(tokensets=("loc",))` (pass that one as `vocabulary`
to give every benchmark the same vocabulary, so their tasks can share a mixture).
"""

from __future__ import annotations

import logging
import os

from palimix import features

log = logging.getLogger(__name__)


# RefCOCO-style benchmarks: (name, folder under data_dir, release of the refs file).
REFCOCO = (("refcoco", "refcoco", "unc"), ("refcoco_plus", "refcoco+", "unc"), ("refcocog", "refcocog", "umd"))
BOX_KINDS = ("detection", "referring")
MBLIP_BENCHMARKS = ("xflickrco", "xvnli", "marvl", "maxm")
BENCHMARKS = (("coco_captions", "xm3600", "vqav2", "textvqa", "xgqa", "coco_detection") + tuple(n for n, _, _ in REFCOCO)
              + MBLIP_BENCHMARKS)


def _exists(*paths: str) -> bool:
    import tensorflow as tf

    return all(tf.io.gfile.exists(p) for p in paths)


def _splits(candidates: dict):
    """sources.Splits over the splits whose files exist, or None."""
    from palimix import sources

    present = {split: make() for split, (paths, make) in candidates.items() if _exists(*paths)}
    return sources.Splits(present) if present else None


def register_benchmarks(
    data_dir: str,
    *,
    image_size: int = features.DEFAULT_IMAGE_SIZE,
    prompt_style: str = "pali",
    overwrite: bool = False,
    vocabulary=None,
) -> list[str]:
    """Registers the benchmarks found under `data_dir`; returns their mixture names."""
    from palimix import languages, sources, vocab
    from palimix.tasks.registry import add_task

    j = lambda *parts: os.path.join(data_dir, *parts)  # noqa: E731
    common = dict(image_size=image_size, prompt_style=prompt_style, overwrite=overwrite)
    registered = []

    def register(name, **kwargs):
        if kwargs["kind"] in BOX_KINDS:  # <loc> targets: a vocabulary that has them.
            kwargs["vocabulary"] = vocabulary or vocab.default_vocabulary(tokensets=("loc",))
        elif vocabulary is not None:
            kwargs["vocabulary"] = vocabulary
        add_task(name, **kwargs, **common)
        registered.append(name)

    coco = _splits({
        split: ((j("coco", "annotations", f"captions_{sub}2017.json"), j("coco", f"{sub}2017")),
                lambda sub=sub, split=split: sources.CocoCaptions(
                    j("coco", "annotations", f"captions_{sub}2017.json"), j("coco", f"{sub}2017"), split=split))
        for split, sub in (("train", "train"), ("validation", "val"))
    })
    if coco:
        register("coco_captions", kind="caption", source=coco, languages=["en"])

    if _exists(j("xm3600", "captions.jsonl"), j("xm3600", "images")):
        register("xm3600", kind="caption", source=sources.Xm3600(j("xm3600", "captions.jsonl"), j("xm3600", "images")),
                 languages=languages.codes("xm3600"))

    def vqa_files(sub):
        return (j("vqav2", f"v2_OpenEnded_mscoco_{sub}2014_questions.json"),
                j("vqav2", f"v2_mscoco_{sub}2014_annotations.json"), j("coco", f"{sub}2014"))

    vqav2 = _splits({
        split: (vqa_files(sub), lambda sub=sub, split=split: sources.Vqav2(*vqa_files(sub), split=split))
        for split, sub in (("train", "train"), ("validation", "val"))
    })
    if vqav2:
        register("vqav2", kind="vqa", source=vqav2, languages=["en"])

    textvqa = _splits({
        split: ((j("textvqa", f"TextVQA_0.5.1_{sub}.json"), j("textvqa", "train_images")),
                lambda sub=sub, split=split: sources.TextVqa(
                    j("textvqa", f"TextVQA_0.5.1_{sub}.json"), j("textvqa", "train_images"), split=split))
        for split, sub in (("train", "train"), ("validation", "val"))
    })
    if textvqa:
        register("textvqa", kind="vqa", source=textvqa, languages=["en"])

    if _exists(j("xgqa", "zero_shot"), j("gqa", "images")):
        xgqa = sources.Xgqa(j("xgqa", "zero_shot"), j("gqa", "images"))
        register("xgqa", kind="vqa", source=xgqa, languages=sorted(xgqa.questions))

    _register_box_benchmarks(j, register)
    _register_mblip_benchmarks(j, register, prompt_style)

    skipped = sorted(set(BENCHMARKS) - set(registered))
    log.info("Registered benchmarks %s from %s; not found there: %s", registered, data_dir, skipped)
    return registered


def _register_box_benchmarks(j, register) -> None:
    """COCO detection and the RefCOCO family, where their files are (`j` joins under data_dir)."""
    from palimix import sources
    from palimix.sources.refcoco import RELEASE_SPLITS

    def instances(sub):
        return j("coco", "annotations", f"instances_{sub}2017.json"), j("coco", f"{sub}2017")

    coco_detection = _splits({
        split: (instances(sub), lambda sub=sub, split=split: sources.CocoDetection(*instances(sub), split=split))
        for split, sub in (("train", "train"), ("validation", "val"))
    })
    if coco_detection:
        register("coco_detection", kind="detection", source=coco_detection, languages=["en"])

    for name, folder, release in REFCOCO:
        files = (j(folder, f"refs({release}).p"), j(folder, "instances.json"), j("coco", "train2014"))
        if _exists(*files):
            register(name, kind="referring", source=sources.RefCoco(*files, splits=RELEASE_SPLITS[release]),
                     languages=["en"])


def _register_mblip_benchmarks(j, register, prompt_style: str) -> None:
    """xFlickrCO, XVNLI, MaRVL and MaXM, where their files are (`j` joins under data_dir).
    XVNLI's and MaRVL's labels are English words whatever the statement's language:
    their prompts ask for English where the style can say so (pali, instruct)."""
    from palimix import prompts, sources
    from palimix.metrics.text import accuracy, exact_match

    english = {"answer_language": "en"} if prompts.style(prompt_style).names_answer_language else {}
    flickr = j("flickr30k", "images")
    if _exists(j("xflickrco", "annotations"), flickr, j("coco", "val2014")):
        source = sources.XFlickrCo(j("xflickrco", "annotations"), flickr, j("coco", "val2014"))
        register("xflickrco", kind="caption", source=source, languages=sorted(source.files))
    if _exists(j("xvnli", "annotations"), flickr):
        source = sources.Xvnli(j("xvnli", "annotations"), flickr)
        register("xvnli", kind="vqa", source=source, languages=sorted(source.files), metrics=[accuracy], **english)
    if _exists(j("marvl", "zero_shot", "annotations"), j("marvl", "images")):
        source = sources.Marvl(j("marvl", "zero_shot", "annotations"), j("marvl", "images"))
        register("marvl", kind="vqa", source=source, languages=sorted(source.files), metrics=[accuracy], **english)
    if _exists(j("maxm", "maxm_v1_release"), j("xm3600", "images")):
        source = sources.Maxm(j("maxm", "maxm_v1_release"), j("xm3600", "images"))
        # MaXM and mBLIP score a prediction right when it equals any processed answer.
        register("maxm", kind="vqa", source=source, languages=sorted(source.questions), metrics=[exact_match])
