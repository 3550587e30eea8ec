"""VQA accuracy (official and normalized semantics), ANLS, text metrics, kinds, and the
per-language aggregation."""

import json
import math

import pytest

from palimix import kinds, metrics
from palimix.errors import UnknownLanguageError, UsageError
from palimix.metrics import per_language, vqa

TEN = lambda answer: [answer] * 10  # noqa: E731


# --- the official normalisation, rule by rule -----------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Red Ball.", "red ball"),
        ("dont", "don't"),
        ("yes!", "yes"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit,digit comma: every mark is deleted
        ("red, white", "red white"),  # a mark next to a space is deleted
        ("black/white", "black white"),  # a mark between words becomes a space
        ("  yes \n", "yes"),
        ("", ""),
    ],
)
def test_official_normalization(answer, expected):
    assert vqa.normalize_answer(answer) == expected


def test_tables_are_the_official_ones():
    tables = json.loads((vqa.importlib.resources.files("palimix") / "data" / "vqa_normalization.json").read_text())
    assert len(tables["contractions"]) == 120
    assert tables["articles"] == ["a", "an", "the"]
    assert tables["number_words"]["ten"] == "10"
    assert "'" not in tables["punctuation"] and "!" in tables["punctuation"]


# --- accuracy ----------------------------------------------------------------------


def test_leave_one_out_accuracy():
    answers = ["2"] * 3 + ["3"] * 7
    # 2 matches three annotators: 7 subsets keep all three (1.0), 3 subsets keep two (2/3).
    assert vqa.question_accuracy(answers, "2") == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert vqa.question_accuracy(["cat"] + ["dog"] * 9, "cat") == pytest.approx(0.9 * (1 / 3))
    assert vqa.question_accuracy(answers, "4") == 0.0


def test_official_vs_normalized_semantics():
    # Unanimous answers: the official script does not normalise the prediction.
    assert metrics.vqa_accuracy([TEN("no")], ["No"])["vqa_accuracy"] == 0.0
    assert metrics.vqa_accuracy([TEN("no")], ["no "])["vqa_accuracy"] == pytest.approx(100.0)  # stripped
    assert metrics.vqa_accuracy([TEN("no")], ["No"], semantics="normalized")["vqa_accuracy"] == pytest.approx(100.0)
    # Disagreeing answers: both sides normalised in both semantics.
    answers = ["two"] * 5 + ["2"] * 5
    for semantics in vqa.SEMANTICS:
        assert metrics.vqa_accuracy([answers], ["Two."], semantics=semantics)["vqa_accuracy"] == pytest.approx(100.0)


def test_vqa_edge_cases():
    assert metrics.vqa_accuracy([["yes"]], ["yes"])["vqa_accuracy"] == 100.0  # single answer: defined
    assert metrics.vqa_accuracy(["yes"], ["no"])["vqa_accuracy"] == 0.0  # plain string target
    assert metrics.vqa_accuracy([TEN("yes")], [""])["vqa_accuracy"] == 0.0
    with pytest.raises(UsageError, match="semantics"):
        metrics.vqa_accuracy([TEN("yes")], ["yes"], semantics="lenient")
    with pytest.raises(UsageError, match="1 targets but 2"):
        metrics.vqa_accuracy([TEN("yes")], ["yes", "no"])
    with pytest.raises(UsageError, match="no reference"):
        metrics.vqa_accuracy([[]], ["yes"])


# --- ANLS and string metrics -------------------------------------------------------


def test_anls():
    assert metrics.anls([["Hello World"]], ["hello world  "])["anls"] == pytest.approx(100.0)
    assert metrics.anls([["abcd"]], ["abce"])["anls"] == pytest.approx(75.0)
    assert metrics.anls([["abcd"]], ["xyzd"])["anls"] == 0.0  # NL 0.75 >= 0.5
    assert metrics.anls([["abcd", "abce"]], ["abce"])["anls"] == pytest.approx(100.0)  # best answer
    assert metrics.anls([["abc"]], [""])["anls"] == 0.0
    assert metrics.anls([[""]], [""])["anls"] == 100.0
    with pytest.raises(UsageError):
        metrics.anls([["a"]], ["a"], threshold=0)


def test_exact_match_accuracy_relaxed():
    assert metrics.exact_match([["Paris", "paris"], "Rome"], ["paris ", "rome"])["exact_match"] == 50.0
    assert metrics.exact_match(["Rome"], ["rome"], ignore_case=True)["exact_match"] == 100.0
    assert metrics.accuracy(["cat", "dog"], ["cat", "cat"]) == {"accuracy": 50.0}
    relaxed = metrics.relaxed_accuracy(["40%", "12", "0", "Yes", "100"], ["0.41", "12.7", "0", "yes", "abc"])
    assert relaxed["relaxed_accuracy"] == pytest.approx(60.0)


def test_sacrebleu_and_chrf_per_language():
    import sacrebleu

    en = metrics.sacrebleu_bleu([["The cat sat on the mat."]], ["The cat sat on a mat."])["bleu"]
    assert en == pytest.approx(sacrebleu.corpus_bleu(["The cat sat on a mat."], [["The cat sat on the mat."]]).score)
    zh = metrics.sacrebleu_bleu([["猫坐在垫子上。"]], ["猫坐在垫子上。"], language="zh")["bleu"]
    assert zh == pytest.approx(100.0)
    ja = metrics.sacrebleu_bleu([["猫がソファーの上で寝ています。"]], ["猫がソファーの上で寝ています。"], language="ja")
    assert ja["bleu"] == pytest.approx(100.0)
    # Variable numbers of references per example.
    mixed = metrics.chrf([["a cat", "one cat"], ["a dog"]], ["a cat", "a dog"])["chrf"]
    assert mixed == pytest.approx(100.0)
    assert 0 < metrics.chrf([["แมวนอนอยู่บนโซฟา"]], ["แมวนอนบนโซฟา"], language="th")["chrf"] < 100
    with pytest.raises(UnknownLanguageError):
        metrics.chrf([["a"]], ["a"], language="klingon")


# --- kinds ---------------------------------------------------------------------------


def test_each_kinds_metrics_bind_the_language_and_fit_seqio():
    import seqio

    fns = kinds.get("caption").metric_fns("zh-Hant")
    assert [f.__name__ for f in fns] == ["cider_zh", "bleu_zh", "rouge_l_zh"]
    result = fns[0]([["两只猫"]], ["两只猫"])
    assert set(result) == {"cider"}
    for kind in kinds.KINDS.values():
        predicted = [fn for fn in kind.metric_fns("en") if not per_language.takes_scores(fn)]
        assert kind.primary_metric in {key for fn in predicted for key in fn([["a b c d"]], ["a b c d"])}
    task = seqio.Task(
        "palimix_metrics_kind_check",
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["validation"]),
        output_features={},
        metric_fns=kinds.get("ocr").metric_fns("en") + kinds.get("translation").metric_fns("de"),
    )
    assert len(task.predict_metric_fns) == 4


def test_unknown_kind_and_language():
    with pytest.raises(UsageError, match="captions"):
        kinds.get("captions")
    with pytest.raises(UnknownLanguageError):
        kinds.get("caption").metric_fns("xx-nope")


def test_per_language_scores_each_language_with_its_own_metrics():
    """One multilingual task's targets keep their language; each language is scored
    with its metrics (Chinese CIDEr on jieba words), and the macro mean is unweighted."""
    fn = per_language.by_language(lambda code: kinds.get("caption").metric_fns(code))
    targets = [per_language.language_target("en", ["a red circle"]), per_language.language_target("zh", ["两只猫"]),
               per_language.language_target("en", ["a blue square"])]
    predictions = ["a red circle", "两只狗", "a blue square"]
    values = fn(targets, predictions)
    en = kinds.get("caption").metric_fns("en")[0]([["a red circle"], ["a blue square"]], ["a red circle", "a blue square"])
    zh = kinds.get("caption").metric_fns("zh")[0]([["两只猫"]], ["两只狗"])
    assert values["cider/en"] == en["cider"] and values["cider/zh"] == zh["cider"]
    assert values["cider/macro"] == pytest.approx((en["cider"] + zh["cider"]) / 2)
    assert values["examples/en"] == 2 and values["examples/zh"] == 1
    assert per_language.split_keys(values)["zh"]["cider"] == zh["cider"]
    assert per_language.example_counts(values) == {"en": 2, "zh": 1}
    with pytest.raises(TypeError, match="language_target"):
        fn(["a plain target"], ["a plain target"])


# --- per-language aggregation ------------------------------------------------------


def test_summarize_macro_averages_languages_equally():
    task_metrics = {
        "xm3600_en": {"cider": 80.0, "bleu4": 20.0},
        "coco_en": {"cider": 120.0},
        "xm3600_de": {"cider": 40.0, "bleu4": 10.0},
        "xm3600_th": {"cider": float("nan")},
        "text_aux": {"accuracy": 99.0},
    }
    languages = {"xm3600_en": "en", "coco_en": "en", "xm3600_de": "de", "xm3600_th": "th"}
    report = metrics.summarize(task_metrics, languages)
    assert report.per_language["en"] == {"cider": 100.0, "bleu4": 20.0}  # two English tasks averaged
    assert report.macro == {"cider": 70.0, "bleu4": 15.0}
    assert report.languages_counted == {"bleu4": 2, "cider": 2}
    table = report.to_markdown(["cider", "bleu4"])
    assert "| de | 40.0 | 10.0 |" in table and "macro (2 languages)" in table
    assert json.loads(report.to_json())["macro"]["cider"] == 70.0
    by_function = metrics.summarize(task_metrics, lambda name: name.rsplit("_", 1)[1] if "xm3600" in name else None)
    assert by_function.macro["cider"] == 60.0 and not math.isnan(by_function.macro["bleu4"])


def test_summarize_rejects_unknown_language():
    with pytest.raises(UnknownLanguageError):
        metrics.summarize({"t": {"cider": 1.0}}, {"t": "zz-unknown"})
