"""The runner's in-memory input (palimix.runner.memory_data): the same examples as the
seqio pipeline, mixture rates, exact restore, and the auto choice of input mode.
Uses the small real task of tests/runner_fixture_tasks.py."""

import collections
import json
import os

import numpy as np
import pytest

from palimix.errors import UsageError

LENGTHS = {"inputs": 8, "targets": 8, "image": 32}


def _converter():
    """The tiny PaLI's feature converter (what the runner passes for that network)."""
    from palimix.models import configs, networks

    return networks.feature_converter(configs.get("tiny"))


@pytest.fixture(scope="module", autouse=True)
def _environment(tmp_path_factory):
    # Once per process: the fixture module writes its images on first import, there.
    os.environ.setdefault("PALIMIX_RUNNER_FIXTURE_DIR", str(tmp_path_factory.mktemp("fixture_images")))
    import tests.runner_fixture_tasks  # noqa: F401  (registers runner_fixture_colors)


@pytest.fixture(scope="module")
def batches():
    from palimix.runner.memory_data import MemoryBatches

    return MemoryBatches("runner_fixture_colors", LENGTHS, 4, converter=_converter(), seed=3, passes=2)


def test_holds_every_example_of_the_seqio_pipeline_once(batches):
    import seqio

    assert batches.task_names == ["runner_fixture_colors_de", "runner_fixture_colors_en"]
    for name, columns in zip(batches.task_names, batches._tasks):
        ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False, use_cached=False)
        expected = list(_converter()(ds, LENGTHS).as_numpy_iterator())
        # A deterministic task read for 2 epochs is kept once.
        assert len(columns["_image"]) == len(expected) == 32
        got = {(tuple(columns["encoder_input_tokens"][i]), tuple(columns["decoder_target_tokens"][i]),
                batches._image_pool[columns["_image"][i]].tobytes()) for i in range(32)}
        want = {(tuple(e["encoder_input_tokens"]), tuple(e["decoder_target_tokens"]), e["encoder_images"].tobytes())
                for e in expected}
        assert got == want
    # The two languages share their 32 training images: stored once.
    assert len(batches._image_pool) == 32


def test_batches_have_the_model_features_and_follow_the_rates(batches):
    batch = next(batches)
    assert batch["encoder_images"].shape == (4, 32, 32, 3) and batch["encoder_images"].dtype == np.float32
    assert batch["encoder_input_tokens"].shape == (4, 8)
    assert set(batch) == {"encoder_images", "encoder_image_mask", "encoder_input_tokens", "decoder_input_tokens",
                          "decoder_target_tokens", "decoder_loss_weights"}
    # Rates by example count (32 each): the tasks are picked about equally often, and
    # each task's examples come once per epoch (a permutation), not with replacement.
    start = batches._positions.copy()
    for _ in range(40):
        next(batches)
    taken = batches._positions - start
    assert taken.sum() == 160 and abs(int(taken[0]) - int(taken[1])) < 40


def test_restore_continues_exactly(batches, tmp_path):
    from palimix.runner.memory_data import MemoryBatches

    for _ in range(5):
        next(batches)
    batches.save_state(str(tmp_path))
    assert json.load(open(tmp_path / "position.json"))["mode"] == "memory"
    expected = [next(batches) for _ in range(12)]  # Crosses an epoch boundary of both tasks.
    again = MemoryBatches("runner_fixture_colors", LENGTHS, 4, converter=_converter(), seed=3, passes=2)
    again.restore_state(str(tmp_path))
    for want in expected:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other = MemoryBatches("runner_fixture_colors", LENGTHS, 2, converter=_converter(), seed=3, passes=2)
    with pytest.raises(UsageError, match="batch size 4"):
        other.restore_state(str(tmp_path))


def test_stream_refuses_a_memory_position(batches, tmp_path):
    from palimix.runner.data import TrainBatches

    batches.save_state(str(tmp_path))
    stream = TrainBatches("runner_fixture_colors", LENGTHS, 4, converter=_converter(), seed=3)
    with pytest.raises(UsageError, match="'memory' input"):
        stream.restore_state(str(tmp_path))


def test_auto_input_mode_follows_the_memory_estimate():
    from palimix.runner.inputs import choose_input_mode

    # 64 examples of 32x32 images: ~0.8 MB.
    assert choose_input_mode("auto", "runner_fixture_colors", "train", LENGTHS, 100) == "memory"
    assert choose_input_mode("auto", "runner_fixture_colors", "train", LENGTHS, 0.1) == "stream"
    assert choose_input_mode("stream", "runner_fixture_colors", "train", LENGTHS, 100) == "stream"
    with pytest.raises(UsageError, match="Did you mean: memory"):
        choose_input_mode("memroy", "runner_fixture_colors", "train", LENGTHS, 100)


def test_random_preprocessing_keeps_one_draw_per_pass():
    """A task whose preprocessing draws (span corruption noise) keeps the distinct draws
    of its `passes` epochs."""
    from palimix.runner.memory_data import MemoryBatches

    one = MemoryBatches("palimix_demo_span_corruption_mul", {"inputs": 64, "targets": 32, "image": 64}, 8,
                        converter=_converter(), passes=1)
    two = MemoryBatches("palimix_demo_span_corruption_mul", {"inputs": 64, "targets": 32, "image": 64}, 8,
                        converter=_converter(), passes=2)
    n = len(one._tasks[0]["_image"])
    assert len(two._tasks[0]["_image"]) > 1.5 * n
    assert len(one._image_pool) == len(two._image_pool) == 1  # Language-only: one blank image.
    languages = collections.Counter(next(one)["encoder_image_mask"].tolist())
    assert languages == {0: 8}
