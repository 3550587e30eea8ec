"""Fréchet distance between image sets (FID) with a pluggable feature network.

    from palimix.metrics.fid import fid, fid_from_features, frechet_distance
    fid(real_images, generated_images, features=my_network)        # {"fid": ...}
    frechet_distance(mu1, sigma1, mu2, sigma2)                      # the formula
    fid_from_features(real_features, generated_features)

`features` is any callable `images [N, H, W, 3] -> features [N, D]` (Inception-v3's pool3
for the standard FID, whose weights palimix cannot ship; `downsampled_pixels` is a
weightless stand-in for the demo and tests). FID is reported as is (lower is better), not
on the 0-100 scale of the text metrics.

The formula is pytorch-fid's / clean-fid's (Heusel et al. 2017):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))
with covariances estimated with N - 1 (numpy's `np.cov`, as both do). The trace of the
matrix square root is computed as TF-GAN does, from the eigenvalues of the symmetric PSD
matrix sqrt(S1) S2 sqrt(S1) (its square root has the same trace as (S1 S2)^(1/2)), which
stays real and finite where `scipy.linalg.sqrtm(S1 @ S2)` needs pytorch-fid's epsilon and
imaginary-part fallbacks. tests/test_fid.py checks it against that sqrtm computation and
the closed form for diagonal covariances on fixed feature arrays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from palimix.errors import UsageError

FeatureNetwork = Callable[[np.ndarray], np.ndarray]


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D] in float64 (N - 1 normalization)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise UsageError(f"FID needs features [N, D] with N >= 2, got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for covariance matrices S1, S2."""
    root = _symmetric_sqrt(sigma1)
    values = np.linalg.eigvalsh(root @ sigma2 @ root)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UsageError(f"FID statistics differ in shape: means {mu1.shape} / {mu2.shape}, "
                         f"covariances {sigma1.shape} / {sigma2.shape}.")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(real_features, generated_features) -> float:
    return frechet_distance(*statistics(real_features), *statistics(generated_features))


def compute_features(images, features: FeatureNetwork, batch_size: int = 64) -> np.ndarray:
    """features(images) batch by batch -> [N, D]."""
    images = np.asarray(images)
    out = [np.asarray(features(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).reshape(len(images), -1) if out else np.zeros((0, 0))


def fid(real_images, generated_images, *, features: FeatureNetwork, batch_size: int = 64) -> dict[str, float]:
    """{"fid": the Fréchet distance between the two image sets in `features`' space}."""
    real = compute_features(real_images, features, batch_size)
    generated = compute_features(generated_images, features, batch_size)
    return {"fid": fid_from_features(real, generated)}


def downsampled_pixels(size: int = 8) -> FeatureNetwork:
    """A weightless feature network: each image average-pooled to size x size x 3, flattened
    (a stand-in where no Inception weights are available; not comparable to published FIDs)."""

    def features(images):
        images = np.asarray(images, np.float64)
        n, h, w, c = images.shape
        if h % size or w % size:
            raise UsageError(f"downsampled_pixels({size}): image size {h}x{w} is not a multiple of {size}.")
        pooled = images.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))
        return pooled.reshape(n, -1)

    return features
