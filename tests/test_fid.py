"""FID against independent computations on fixed feature arrays, and the code metrics.

pytorch-fid and clean-fid need PyTorch (not installed here), so the reference is
pytorch-fid's `calculate_frechet_distance` computation written out with scipy
(`scipy.linalg.sqrtm(sigma1 @ sigma2)`, its epsilon retry and real part), plus the closed
forms for diagonal and for commuting covariances (sum of (sqrt(a_i) - sqrt(b_i))^2).
"""

import numpy as np
import pytest
from scipy import linalg

from palimix.errors import UsageError
from palimix.metrics import codes
from palimix.metrics.fid import downsampled_pixels, fid, fid_from_features, frechet_distance, statistics


def sqrtm_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's computation (fid_score.calculate_frechet_distance), via scipy."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def fixed_features(seed, n, d, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + shift


@pytest.mark.parametrize("n,d", [(200, 8), (64, 32)])
def test_matches_the_sqrtm_computation_of_pytorch_fid(n, d):
    real, generated = fixed_features(0, n, d), fixed_features(1, n, d, shift=0.3)
    expected = sqrtm_reference(*statistics(real), *statistics(generated))
    assert fid_from_features(real, generated) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_statistics_are_numpys_unbiased_mean_and_covariance():
    features = fixed_features(2, 30, 4)
    mu, sigma = statistics(features)
    np.testing.assert_allclose(mu, features.mean(0))
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False))
    assert sigma[0, 0] == pytest.approx(features[:, 0].var(ddof=1))


def test_closed_forms_for_diagonal_and_commuting_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))  # same eigenvectors: S1 and S2 commute
    s1, s2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-9)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_identical_sets_score_zero_and_rank_deficient_sets_stay_finite():
    features = fixed_features(4, 10, 16)  # N < D: singular covariances
    # Float rounding in the square roots of near-zero eigenvalues: about 1e-7 of tr(S) ~ 10.
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-5)
    other = fixed_features(5, 10, 16)
    score = fid_from_features(features, other)
    assert np.isfinite(score) and score > 0
    assert score == pytest.approx(sqrtm_reference(*statistics(features), *statistics(other)), rel=1e-4)


def test_fid_runs_the_feature_network_in_batches():
    rng = np.random.default_rng(6)
    real = rng.uniform(-1, 1, (20, 16, 16, 3))
    generated = np.clip(real + rng.normal(0, 0.5, real.shape), -1, 1)
    network = downsampled_pixels(4)
    calls = []

    def counting(images):
        calls.append(len(images))
        return network(images)

    score = fid(real, generated, features=counting, batch_size=8)["fid"]
    assert calls == [8, 8, 4, 8, 8, 4]
    assert score == pytest.approx(fid_from_features(network(real), network(generated)))
    assert fid(real, real, features=network)["fid"] == pytest.approx(0.0, abs=1e-5)
    assert network(real).shape == (20, 4 * 4 * 3)


def test_bad_input_is_a_clear_error():
    with pytest.raises(UsageError, match="N >= 2"):
        statistics(np.zeros((1, 3)))
    with pytest.raises(UsageError, match="differ in shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(UsageError, match="not a multiple"):
        downsampled_pixels(5)(np.zeros((2, 8, 8, 3)))


def test_code_accuracy():
    targets = [[1, 2, 3, 4], np.array([[5, 6], [7, 8]])]
    predictions = [[1, 2, 0, 4, 9], [5, 6]]  # extra code ignored; missing codes are wrong
    assert codes.code_accuracy(targets, predictions) == {"code_accuracy": pytest.approx(100 * 5 / 8)}
    with pytest.raises(UsageError, match="integer codes"):
        codes.code_accuracy([[1, 2]], ["a b"])
    with pytest.raises(UsageError, match="2 targets but 1"):
        codes.code_accuracy(targets, predictions[:1])


def test_code_perplexity():
    # A uniform guess over 1024 codes: perplexity 1024.
    targets = [list(range(16)), list(range(4))]
    scores = [16 * np.log(1 / 1024), 4 * np.log(1 / 1024)]
    assert codes.code_perplexity(targets, scores)["code_perplexity"] == pytest.approx(1024.0)
    assert codes.code_perplexity([[1]], [0.0])["code_perplexity"] == pytest.approx(1.0)
    assert codes.code_perplexity([[1, 2]], [4 * np.log(1 / 8)], extra_tokens=2)["code_perplexity"] == pytest.approx(8.0)


def test_unigram_perplexity_baseline():
    # Frequencies 3:1 of codes 0 and 1 (no smoothing): a target [0, 1] costs -log(3/4) - log(1/4).
    result = codes.unigram_perplexity([[0, 0, 0, 1]], [[0, 1]], codebook_size=2, smoothing=0.0)
    assert result["code_perplexity"] == pytest.approx(np.exp(-(np.log(0.75) + np.log(0.25)) / 2))
    # No training codes, add-one counts: uniform over the codebook.
    assert codes.unigram_perplexity([], [[5, 7]], codebook_size=1024)["code_perplexity"] == pytest.approx(1024.0)
