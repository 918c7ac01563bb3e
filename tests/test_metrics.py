"""Fréchet distance against independent references, and the shipped digits classifier."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm_course.metrics import frechet_distance, gaussian_stats


def _random_covariance(dim: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # For diagonal covariances (Σ1Σ2)^½ = diag(σ1σ2), so FD = |μ1-μ2|² + Σ(σ1-σ2)².
    f64 = dict(dtype=torch.float64)
    mu1, mu2 = (
        torch.tensor([0.0, 1.0, -2.0], **f64),
        torch.tensor([0.5, 1.0, 0.0], **f64),
    )
    std1, std2 = (
        torch.tensor([1.0, 2.0, 0.5], **f64),
        torch.tensor([0.3, 2.0, 1.5], **f64),
    )
    expected = float(((mu1 - mu2) ** 2).sum() + ((std1 - std2) ** 2).sum())
    assert frechet_distance(
        mu1, torch.diag(std1**2), mu2, torch.diag(std2**2)
    ) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    generator = torch.Generator().manual_seed(0)
    dim = 16
    mu1, mu2 = (
        torch.randn(dim, generator=generator, dtype=torch.float64),
        torch.randn(dim, generator=generator, dtype=torch.float64),
    )
    sigma1, sigma2 = (
        _random_covariance(dim, generator),
        _random_covariance(dim, generator),
    )
    covmean = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy()).real
    expected = float(
        np.sum((mu1 - mu2).numpy() ** 2)
        + np.trace(sigma1.numpy() + sigma2.numpy() - 2 * covmean)
    )
    # both are float64 eigen/Schur computations of a well-conditioned 16x16 problem
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        expected, rel=1e-8
    )


def test_frechet_distance_of_a_distribution_with_itself_is_zero():
    generator = torch.Generator().manual_seed(1)
    sigma = _random_covariance(8, generator)
    mu = torch.randn(8, generator=generator, dtype=torch.float64)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_gaussian_stats_are_the_sample_mean_and_unbiased_covariance():
    features = torch.randn(
        50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    mean, cov = gaussian_stats(features)
    np.testing.assert_allclose(mean.numpy(), features.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        cov.numpy(), np.cov(features.numpy(), rowvar=False), rtol=1e-12
    )


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


def test_shipped_digits_classifier_is_at_least_97_percent_accurate_on_the_held_out_split():
    from ddpm_course.data import digits
    from ddpm_course.metrics import load_digits_classifier

    images, labels = digits(size=16, split="test")
    with torch.no_grad():
        accuracy = (
            (load_digits_classifier()(images).argmax(1) == labels).float().mean().item()
        )
    assert accuracy >= 0.97


def test_digits_fd_separates_real_digits_from_noise():
    from ddpm_course.metrics import digits_fd, digits_fd_floor

    generator = torch.Generator().manual_seed(0)
    floor = digits_fd_floor(300, generator=generator)
    noise = torch.rand(300, 1, 16, 16, generator=generator) * 2 - 1
    blank = torch.full((300, 1, 16, 16), -1.0)
    # real digits sit at the floor; noise and blank images are far from the test split
    assert digits_fd(noise) > 10 * floor
    assert digits_fd(blank) > 10 * floor


def test_inception_features_refuse_offline_with_a_clear_error(tmp_path, monkeypatch):
    """Chapter 08: with no cached Inception weights and downloading off (the quick profile),
    the Inception path raises an error that says why, never a silent fallback."""
    from ddpm_course import metrics

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(
        RuntimeError, match="not in torch's hub cache.*downloading is off"
    ):
        metrics.inception_features(torch.zeros(2, 1, 28, 28), download=False)
    monkeypatch.setenv("DDPM_COURSE_PROFILE", "quick")
    with pytest.raises(RuntimeError, match="the `quick` profile never downloads"):
        metrics.inception_features(torch.zeros(2, 1, 28, 28))
