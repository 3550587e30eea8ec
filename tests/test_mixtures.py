"""palimix.mixtures: rates by examples, explicit, temperature, UniMax, nesting, gin."""

import collections

import gin
import pytest
import seqio
import tensorflow as tf

from palimix import mixtures
from palimix.errors import UnknownNameError, UsageError
from palimix.mixtures import UniMax, add_mixture, effective_rates

SIZES = {"mixt_a": 100, "mixt_b": 25, "mixt_c": 4}


def _register(name, n):
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"targets": [name] * n})

    vocab = seqio.PassThroughVocabulary(size=0)
    task = seqio.Task(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"], num_input_examples={"train": n}),
        output_features={"targets": seqio.Feature(vocab, dtype=tf.string, rank=0, add_eos=False)},
        preprocessors=[],
    )
    seqio.TaskRegistry.add_provider(name, task)


@pytest.fixture(autouse=True)
def tasks():
    for name, n in SIZES.items():
        seqio.TaskRegistry.remove(name)
        _register(name, n)
    yield
    for name in list(seqio.MixtureRegistry.names()):
        if name.startswith("mixt_"):
            seqio.MixtureRegistry.remove(name)
    for name in SIZES:
        seqio.TaskRegistry.remove(name)


def test_rates_by_examples_are_proportional():
    rates = effective_rates(add_mixture("mixt_examples", list(SIZES)))
    assert rates == pytest.approx({k: v / 129 for k, v in SIZES.items()})


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.3, 100.0])
def test_temperature_p_is_n_to_the_one_over_t(temperature):
    rates = effective_rates(add_mixture("mixt_temp", list(SIZES), temperature=temperature))
    expected = {k: v ** (1 / temperature) for k, v in SIZES.items()}
    total = sum(expected.values())
    assert rates == pytest.approx({k: v / total for k, v in expected.items()})


def test_max_rate_caps_before_temperature():
    rates = effective_rates(add_mixture("mixt_cap", list(SIZES), max_rate=25, temperature=2.0))
    assert rates["mixt_a"] == pytest.approx(rates["mixt_b"])
    assert rates["mixt_c"] == pytest.approx(2 / (5 + 5 + 2))


def test_explicit_and_uniform_and_callable_rates():
    explicit = effective_rates(add_mixture("mixt_dict", list(SIZES), rate={"mixt_a": 1, "mixt_b": 1, "mixt_c": 2}))
    assert explicit["mixt_c"] == pytest.approx(0.5)
    uniform = effective_rates(add_mixture("mixt_uniform", list(SIZES), rate=1.0))
    assert list(uniform.values()) == pytest.approx([1 / 3] * 3)
    by_name = effective_rates(add_mixture("mixt_fn", list(SIZES), rate=lambda t: 3.0 if t.name == "mixt_b" else 1.0))
    assert by_name["mixt_b"] == pytest.approx(0.6)
    with pytest.raises(UsageError, match="missing"):
        add_mixture("mixt_bad", list(SIZES), rate={"mixt_a": 1})
    with pytest.raises(UsageError):
        add_mixture("mixt_bad", list(SIZES), rate=-1)


def test_unimax_allocation():
    # Budget 90 over sizes 4, 25, 100 with 2 epochs: 4 -> min(30, 8) = 8; then 82 / 2 = 41
    # for b -> min(41, 50) = 41; the rest, 41, to a.
    assert UniMax(budget=90, max_epochs=2).allocate(SIZES) == pytest.approx({"mixt_c": 8, "mixt_b": 41, "mixt_a": 41})
    mixture = add_mixture("mixt_unimax", list(SIZES), unimax={"budget": 90, "max_epochs": 2})
    assert effective_rates(mixture) == pytest.approx({"mixt_a": 41 / 90, "mixt_b": 41 / 90, "mixt_c": 8 / 90})
    with pytest.raises(UsageError):
        add_mixture("mixt_bad", list(SIZES), unimax=True, temperature=2.0)
    with pytest.raises(UsageError):
        UniMax(budget=-1)


def test_mixture_of_mixtures_with_lazy_rates_samples_as_expected():
    add_mixture("mixt_inner", ["mixt_b", "mixt_c"], temperature=2.0)  # sqrt: 5 and 2.
    outer = add_mixture("mixt_outer", ["mixt_a", "mixt_inner"], rate={"mixt_a": 1.0, "mixt_inner": 1.0})
    rates = effective_rates(outer)
    assert rates == pytest.approx({"mixt_a": 0.5, "mixt_b": 0.5 * 5 / 7, "mixt_c": 0.5 * 2 / 7})
    ds = outer.get_dataset(None, split="train", shuffle=False, seed=1, num_epochs=None)
    counts = collections.Counter(ex["targets"].decode() for ex in ds.take(2000).as_numpy_iterator())
    assert counts["mixt_a"] / 2000 == pytest.approx(0.5, abs=0.05)
    assert counts["mixt_c"] / 2000 == pytest.approx(rates["mixt_c"], abs=0.04)


def test_names_are_checked():
    add_mixture("mixt_once", ["mixt_a"])
    with pytest.raises(UsageError, match="already registered"):
        add_mixture("mixt_once", ["mixt_b"])
    replaced = add_mixture("mixt_once", ["mixt_b"], overwrite=True)
    assert [t.name for t in replaced.tasks] == ["mixt_b"]
    with pytest.raises(UnknownNameError, match="mixt_a"):
        add_mixture("mixt_typo", ["mixt_aa"])
    with pytest.raises(UsageError):
        add_mixture("bad name!", ["mixt_a"])
    with pytest.raises(UsageError, match="more than once"):
        add_mixture("mixt_dupe", ["mixt_a", "mixt_a"])


def test_mixture_defined_in_a_gin_file(tmp_path):
    gin.clear_config()
    path = tmp_path / "mix.gin"
    path.write_text(
        "import palimix.mixtures\n"
        "MIXTURE_OR_TASK_NAME = @my_mix/palimix.mixture()\n"
        'my_mix/palimix.mixture.name = "mixt_from_gin"\n'
        'my_mix/palimix.mixture.tasks = ["mixt_a", "mixt_c"]\n'
        "my_mix/palimix.mixture.temperature = 2.0\n"
    )
    try:
        assert mixtures.load_gin_mixture(str(path)) == "mixt_from_gin"
        assert mixtures.load_gin_mixture(str(path)) == "mixt_from_gin"  # Idempotent.
        rates = effective_rates(seqio.get_mixture_or_task("mixt_from_gin"))
        assert rates == pytest.approx({"mixt_a": 10 / 12, "mixt_c": 2 / 12})
        with pytest.raises(UsageError, match="not found"):
            mixtures.load_gin_mixture(str(tmp_path / "missing.gin"))
    finally:
        gin.clear_config()
