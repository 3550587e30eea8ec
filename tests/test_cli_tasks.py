"""palimix list / show / stats on the demo and on a gin-defined mixture."""

import json

import pytest

from palimix import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_mixtures_and_tasks(capsys):
    code, out, _ = _run(capsys, "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    demo = rows["palimix_demo"]
    assert demo["kinds"] == sorted(["caption", "vqa", "ocr", "classification", "detection", "translation",
                                    "span_corruption", "prefix_lm", "text_to_image"])
    assert len(demo["languages"]) >= 100 and demo["image_size"] == [64]
    code, out, _ = _run(capsys, "list", "--tasks", "--kind", "ocr", "--language", "th")
    assert code == 0 and "palimix_demo_ocr_mul" in out and "1 tasks" in out
    code, _, err = _run(capsys, "list", "--language", "xx-nope")
    assert code == 2 and "Unknown language code" in err


def test_show_prints_examples_and_writes_a_contact_sheet(capsys, tmp_path):
    sheet = tmp_path / "sheet.html"
    code, out, _ = _run(capsys, "show", "palimix_demo_vqa_mul", "-n", "3", "--html", str(sheet))
    assert code == 0
    assert out.count("prompt: answer ") == 3
    html = sheet.read_text()
    assert html.count("data:image/png;base64,") == 3 and html.count("<b>target</b>") == 3
    code, _, err = _run(capsys, "show", "palimix_demo_vqa_mull")
    assert code == 2 and "palimix_demo_vqa_mul" in err  # Suggests the close match.


def test_stats_counts_and_lengths(capsys):
    code, out, _ = _run(capsys, "stats", "palimix_demo_ocr", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["examples"] == stats["input_examples"] == 546
    assert stats["dropped_images"] == 0
    assert len(stats["examples_per_language"]) == 13
    assert sum(r["rate"] for r in stats["tasks"]) == pytest.approx(1.0)
    assert stats["suggested_task_feature_lengths"]["image"] == 64
    assert 0 < stats["length_percentiles"]["targets"]["p50"] <= stats["length_percentiles"]["targets"]["p100"]


def test_stats_of_a_gin_defined_mixture(capsys, tmp_path):
    import gin

    path = tmp_path / "mix.gin"
    path.write_text(
        "import palimix.tasks\n"
        "MIXTURE_OR_TASK_NAME = @palimix.mixture()\n"
        'palimix.mixture.name = "cli_gin_mix"\n'
        'palimix.mixture.tasks = ["palimix_demo_ocr_mul", "palimix_demo_vqa_mul"]\n'
        "palimix.mixture.rate = 1.0\n"
    )
    try:
        code, out, _ = _run(capsys, "stats", "--gin_file", str(path), "--json")
    finally:
        gin.clear_config()
    assert code == 0
    stats = json.loads(out)
    assert stats["name"] == "cli_gin_mix"
    assert [r["rate"] for r in stats["tasks"]] == pytest.approx([0.5, 0.5])
