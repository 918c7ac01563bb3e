r"""Evaluation: Fréchet distance in the feature space of a shipped digits classifier.

Chapter 08. The Fréchet distance between two sets of features fitted by Gaussians is

.. math:: \mathrm{FD} = \lVert\mu_1-\mu_2\rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}\big)

(Heusel et al. 2017; "FID" when the features come from Inception). Here the features are the 64-d
penultimate layer of a small CNN trained on the 16×16 digits (``weights/digits_classifier.safetensors``,
reproduced by ``python -m ddpm_course.classifiers``). An FD means little alone: compare it with the
**floor**, the FD between real training images and the test split at the same sample size
(:func:`digits_fd_floor`). The floor is real against real, not a lower bound: an FD estimated
from n samples is biased upwards, by an amount that falls roughly like 1/n (Chong & Forsyth
2020), which is why the floor is taken at the models' n; and it moves with the subset drawn.
Samples can score below it: a model's samples may match the test split's feature mean and
covariance better than a random subset of training digits does (for instance with classes as
balanced as the test split), and one floor value is itself one draw.

The same for Fashion-MNIST in the shipped ``fashion-classifier``'s 128 features
(:func:`fashion_fd`, :func:`fashion_fd_floor`), and beside it what an FD cannot say: the
unbiased KID (:func:`kernel_inception_distance`), precision and recall
(:func:`precision_recall`), nearest-neighbour memorisation (:func:`memorisation`), the
likelihood bound in bits/dim (:func:`vlb_bits_per_dim`) and its Gaussian baselines
(:func:`gaussian_bits_per_dim`), and Inception v3's features (:func:`inception_features`),
which raise offline rather than fall back to another network.
"""

from __future__ import annotations

import math
import statistics
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .classifiers import (
    CLASSIFIER_PATH,
    FASHION_CLASSIFIER_PATH,
    DigitsClassifier,
    FashionClassifier,
    load_digits_classifier,
    load_fashion_classifier,
)

__all__ = [
    "DigitsClassifier",
    "frechet_distance",
    "gaussian_stats",
    "load_digits_classifier",
    "digits_features",
    "digits_fd",
    "digits_fd_floor",
    "class_accuracy",
    "within_class_diversity",
    "saturation",
    "seam_error",
    "CLASSIFIER_PATH",
    "FashionClassifier",
    "load_fashion_classifier",
    "fashion_features",
    "fashion_predict",
    "fashion_test_features",
    "fashion_fd",
    "fashion_fd_floor",
    "kernel_inception_distance",
    "pairwise_distances",
    "knn_radii",
    "precision_recall",
    "nearest_neighbours",
    "memorisation",
    "inception_features",
    "fashion_kid",
    "FASHION_CLASSIFIER_PATH",
    "vlb_bits_per_dim",
    "gaussian_bits_per_dim",
]


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    features = features.detach().to(torch.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"need features of shape (N, D) with N >= 2, got {tuple(features.shape)}"
        )
    return features.mean(0), torch.cov(features.T)


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    r"""FD between N(mu1, sigma1) and N(mu2, sigma2).

    :math:`\operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i}` with λ the eigenvalues of
    the symmetric PSD matrix :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` (same spectrum as Σ1Σ2), which
    avoids a non-symmetric matrix square root.
    """
    mu1, sigma1, mu2, sigma2 = (
        torch.as_tensor(v, dtype=torch.float64) for v in (mu1, sigma1, mu2, sigma2)
    )
    if (
        mu1.shape != mu2.shape
        or sigma1.shape != sigma2.shape
        or sigma1.shape != (mu1.shape[0], mu1.shape[0])
    ):
        raise ValueError(
            f"shapes do not match: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)}"
        )
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma1)
    sqrt_sigma1 = (
        eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    )
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt = (
        torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    )
    return float(
        ((mu1 - mu2) ** 2).sum()
        + torch.trace(sigma1)
        + torch.trace(sigma2)
        - 2 * trace_sqrt
    )


@torch.no_grad()
def digits_features(images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Classifier features (N, 64) of digits images (N, 1, 16, 16) in [-1, 1]."""
    model = load_digits_classifier()
    images = images.detach().to("cpu", torch.float32)
    return torch.cat([model.features(chunk) for chunk in images.split(batch_size)])


# ---------------------------------------------- chapter 06's measures of guided samples
@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images (N, 1, 16, 16) in [-1, 1] that the shipped digits classifier labels ``labels``."""
    return (
        (load_digits_classifier()(images.clamp(-1, 1)).argmax(1) == labels)
        .float()
        .mean()
        .item()
    )


def within_class_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance of the classifier features within each class, averaged
    over the classes: lower means the samples of a class look more alike."""
    features = digits_features(images.clamp(-1, 1)).double()
    per_class = []
    for label in labels.unique():
        group = features[labels == label]
        if group.shape[0] > 1:
            distances = torch.cdist(group, group)
            per_class.append(distances.sum() / (group.shape[0] * (group.shape[0] - 1)))
    return float(torch.stack(per_class).mean())


def saturation(images: torch.Tensor, threshold: float = 0.98) -> float:
    """Fraction of pixels with |x| > threshold (x in [-1, 1]): over-guided samples saturate."""
    return (images.abs() > threshold).float().mean().item()


def seam_error(completions: torch.Tensor, truth: torch.Tensor, row: int = 8) -> float:
    """Mean |(x[row] - x[row - 1]) - (truth[row] - truth[row - 1])|: how much the jump across the
    border of the mask differs from the real image's (0 for a seamless completion)."""
    jump = completions[..., row, :] - completions[..., row - 1, :]
    true_jump = truth[..., row, :] - truth[..., row - 1, :]
    return (jump - true_jump).abs().mean().item()


@lru_cache(maxsize=1)
def _test_stats() -> tuple[torch.Tensor, torch.Tensor]:
    from .data import digits

    images, _ = digits(size=16, split="test")
    return gaussian_stats(digits_features(images))


def digits_fd(samples: torch.Tensor) -> float:
    """FD between samples (N, 1, 16, 16) in [-1, 1] and the digits test split, in classifier features."""
    return frechet_distance(*gaussian_stats(digits_features(samples)), *_test_stats())


def digits_fd_floor(n: int, generator: torch.Generator | None = None) -> float:
    """The FD of ``n`` random real training digits against the test split (real against real).

    What a model that reproduced the training set would score at this n, as a reference; not a
    lower bound: it varies with the subset drawn, and samples can score below it (module
    docstring)."""
    from .data import digits

    images, _ = digits(size=16, split="train")
    if not 2 <= n <= images.shape[0]:
        raise ValueError(
            f"n must lie in 2..{images.shape[0]} (the training split), got {n}"
        )
    index = torch.randperm(images.shape[0], generator=generator)[:n]
    return digits_fd(images[index])


# ----------------------------------------------------------------- Fashion-MNIST's metric


@torch.no_grad()
def fashion_features(images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Classifier features (N, 128) of Fashion-MNIST-like images (N, 1, 28, 28) in [-1, 1]."""
    model = load_fashion_classifier()
    images = images.detach().to("cpu", torch.float32)
    return torch.cat([model.features(chunk) for chunk in images.split(batch_size)])


@torch.no_grad()
def fashion_predict(images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The shipped classifier's class (N,) int64 for images (N, 1, 28, 28) in [-1, 1]."""
    model = load_fashion_classifier()
    images = images.detach().to("cpu", torch.float32)
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])


@lru_cache(maxsize=1)
def fashion_test_features() -> torch.Tensor:
    """Features (10000, 128) of the whole Fashion-MNIST test set: the reference of every FD."""
    from .data import fashion_mnist

    images, _ = fashion_mnist("test")
    return fashion_features(images)


def fashion_fd(samples: torch.Tensor) -> float:
    """FD between samples (N, 1, 28, 28) in [-1, 1] and the 10,000 Fashion-MNIST test images,
    in the shipped classifier's features. Compare only with a floor at the same N."""
    reference = gaussian_stats(fashion_test_features())
    return frechet_distance(*gaussian_stats(fashion_features(samples)), *reference)


def fashion_fd_floor(n: int, draws: int = 5, seed: int = 0) -> dict[str, Any]:
    """The FD of ``n`` real Fashion-MNIST *training* images against the test set, over ``draws``
    independent subsets (seeds ``seed``, ``seed + 1``, ...): ``{"n", "median", "min", "max",
    "values"}``.

    What a model that reproduced the training distribution would score at this n (the bias of
    an FD estimated from n samples included); its spread over draws is why one draw is not a
    floor.
    """
    from .data import fashion_mnist

    images, _ = fashion_mnist("train")
    if not 2 <= n <= images.shape[0]:
        raise ValueError(f"n must lie in 2..{images.shape[0]}, got {n}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    values = []
    for k in range(draws):
        generator = torch.Generator().manual_seed(seed + k)
        index = torch.randperm(images.shape[0], generator=generator)[:n]
        values.append(fashion_fd(images[index]))
    ordered = sorted(values)
    return {
        "n": n,
        "median": statistics.median(values),
        "min": ordered[0],
        "max": ordered[-1],
        "values": values,
    }


def kernel_inception_distance(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    subsets: int = 10,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic
    polynomial kernel :math:`k(x, y) = (x^\top y / d + 1)^3`, averaged over ``subsets`` random
    subsets of ``subset_size`` rows of each side; returns (mean, standard deviation).

    For subsets X, Y of m rows each, with kernel matrices K_XX, K_YY, K_XY:
    :math:`\widehat{\mathrm{MMD}}^2 = \frac{\sum_{i\ne j} k(x_i,x_j) + \sum_{i\ne j}
    k(y_i,y_j)}{m(m-1)} - \frac{2}{m^2}\sum_{i,j} k(x_i, y_j)`; unlike the FD its expectation
    does not depend on m. features: (N_a, d) and (N_b, d).
    """
    a = features_a.detach().to(torch.float64)
    b = features_b.detach().to(torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features must be (N, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(
            f"need at least 2 rows on each side, got {a.shape[0]}, {b.shape[0]}"
        )
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:m]]
        y = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (
            k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
        ) / (m * (m - 1))
        values.append(float(within - 2 * k_xy.mean()))
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, spread


def pairwise_distances(
    a: torch.Tensor, b: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    r"""Euclidean distances (N_a, N_b) between the rows of a (N_a, D) and b (N_b, D), in float64
    (from :math:`\lVert a\rVert^2 + \lVert b\rVert^2 - 2 a^\top b`, clamped at 0)."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    b_sq = (b**2).sum(1)
    rows = []
    for chunk in a.split(batch_size):
        squared = (chunk**2).sum(1, keepdim=True) + b_sq - 2 * chunk @ b.T
        rows.append(squared.clamp(min=0).sqrt())
    return torch.cat(rows)


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance (N,) from each row of features (N, D) to its k-th nearest other row."""
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k must lie in 1..{features.shape[0] - 1} (N - 1), got {k}")
    distances = pairwise_distances(features, features)
    # the 0-th smallest is the row itself (distance 0)
    return distances.kthvalue(k + 1, dim=1).values


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3
) -> dict[str, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    The real manifold is the union of balls around each real feature φ_r with radius the
    distance to its k-th nearest real neighbour; precision is the fraction of fake features
    inside it (quality: samples look real), recall the fraction of real features inside the
    fake manifold built the same way (coverage: the real variety is reached). features:
    (N_real, D) and (N_fake, D); the paper uses k = 3 and equal N.
    """
    real_radii = knn_radii(real_features, k)
    fake_radii = knn_radii(fake_features, k)
    cross = pairwise_distances(fake_features, real_features)  # (N_fake, N_real)
    precision = (cross <= real_radii[None, :]).any(dim=1).double().mean()
    recall = (cross.T <= fake_radii[None, :]).any(dim=1).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def nearest_neighbours(
    queries: torch.Tensor, reference: torch.Tensor, k: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of reference (M, D) to each query (N, D): distances (N, k) ascending
    and indices (N, k). Images (N, C, H, W) are flattened (pixel space)."""
    queries, reference = queries.flatten(1), reference.flatten(1)
    values, indices = [], []
    for chunk in queries.split(256):
        distances = pairwise_distances(chunk, reference)
        top = distances.topk(k, dim=1, largest=False)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def memorisation(
    samples: torch.Tensor,
    train: torch.Tensor,
    held_out: torch.Tensor,
    ratio: float = 1 / 3,
) -> dict[str, float]:
    r"""Nearest-neighbour memorisation statistics of samples against their training set.

    For each sample, d₁ and d₂ are the distances to its nearest and second-nearest training
    image; it counts as a copy when :math:`d_1 < \text{ratio}\cdot d_2` (Yoon et al. 2023 use
    1/3: far closer to one training image than to any other). ``held_out`` images (real, not
    trained on) give the same statistics for data that cannot have been memorised: a model
    that generalises has a median d₁ like theirs; one that memorises has far smaller. Inputs
    are (N, ...) tensors compared in their own space (pixels or features).
    """
    result = {}
    for name, queries in (("samples", samples), ("held_out", held_out)):
        distances, _ = nearest_neighbours(queries, train, k=2)
        # the median of an even count is the mean of the middle two (torch.median's is the lower)
        result[f"{name}_median_d1"] = float(distances[:, 0].quantile(0.5))
        result[f"{name}_copy_fraction"] = float(
            (distances[:, 0] < ratio * distances[:, 1]).double().mean()
        )
    result["median_d1_ratio"] = (
        result["samples_median_d1"] / result["held_out_median_d1"]
    )
    return result


INCEPTION_WEIGHTS = "inception_v3_google-0cc3c7bd.pth"


def inception_features(
    images: torch.Tensor, download: bool | None = None, batch_size: int = 64
) -> torch.Tensor:
    """2048-d pool features of torchvision's ImageNet Inception v3 for images (N, C, H, W) in
    [-1, 1] (grey repeated to RGB, resized to 299×299, ImageNet normalisation).

    The path to a conventional FID in the ``full`` profile. Its weights come from the network
    (``download``: default only in the ``full`` profile); offline, without them in torch's hub
    cache, this raises a ``RuntimeError`` that says so: never a silent fallback to another
    network. (TF-FID's Inception weights differ slightly; use a maintained FID package such as
    ``clean-fid`` or ``torchmetrics`` for numbers comparable with papers.)
    """
    from torchvision.models import Inception_V3_Weights, inception_v3

    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if download is None:
        from .profiles import profile

        download = profile() == "full"
    if not cached.exists() and not download:
        raise RuntimeError(
            f"Inception v3's ImageNet weights are not in torch's hub cache ({cached}) and "
            "downloading is off (the `quick` profile never downloads). Inception FID means "
            "little on 28×28 grey images anyway: use fashion_fd here, or run with "
            "DDPM_COURSE_PROFILE=full / download=True where a network exists."
        )
    try:
        network = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
    except Exception as error:  # the download's URLError, an SSL error, ...
        raise RuntimeError(
            f"could not fetch Inception v3's ImageNet weights ({error}); "
            "Inception FID needs them: run where a network exists"
        ) from error
    network.fc = nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    features = []
    with torch.no_grad():
        for chunk in images.detach().float().cpu().split(batch_size):
            rgb = (
                ((chunk + 1) / 2).expand(-1, 3, -1, -1)
                if chunk.shape[1] == 1
                else (chunk + 1) / 2
            )
            rgb = F.interpolate(
                rgb, size=(299, 299), mode="bilinear", align_corners=False
            )
            features.append(network((rgb - mean) / std))
    return torch.cat(features)


def fashion_kid(
    samples: torch.Tensor, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) between samples and the Fashion-MNIST test set, in the
    shipped classifier's features."""
    return kernel_inception_distance(
        fashion_features(samples),
        fashion_test_features(),
        subsets,
        subset_size,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------- likelihood (chapter 08)
@torch.no_grad()
def vlb_bits_per_dim(
    model,
    diffusion,
    x0: torch.Tensor,
    draws: int = 8,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
) -> dict[str, torch.Tensor]:
    r"""An unbiased Monte-Carlo estimate of the variational bound on :math:`-\log_2 p(x_0)`
    per dimension, one per image, with ``draws`` network calls per image (plus one for L_0).

    .. math:: L = L_T + L_0 + \sum_{t=1}^{T-1} L_t, \qquad
       \sum_{t=1}^{T-1} L_t \approx \sum_{k=1}^{K} |S_k|\, L_{t_k},\ t_k \sim U(S_k)

    (Eq. (5) of Ho et al. 2020; chapter 03's pieces: :meth:`GaussianDiffusion.prior_bpd` for
    :math:`L_T`, :meth:`GaussianDiffusion.vb_terms_bpd` for the KL terms and the discretised
    decoder :math:`L_0`), with {1, ..., T - 1} cut into at most K = ``draws`` strata
    :math:`S_k` of equal width in log t and one t drawn uniformly in each, x_t from one fresh
    ε each: the expectation is the bound exactly (stratified sampling). x0: (N, C, H, W) 8-bit data in
    [-1, 1]. Returns (N,) float64 tensors ``total``, ``prior``, ``decoder`` and ``diffusion``
    (the estimated sum of the KL terms), all in bits/dim.
    """
    T = diffusion.num_timesteps
    if not 1 <= draws <= T - 1:
        raise ValueError(f"draws must lie in 1..{T - 1} (T - 1), got {draws}")
    n = x0.shape[0]
    # strata [b_k, b_{k+1}) equal in log t: the terms fall roughly like 1/t, so equal-width
    # strata would leave almost all the variance in the first
    bounds = torch.logspace(0, math.log10(T), draws + 1, dtype=torch.float64)
    bounds = torch.unique(bounds.round().long())
    bounds[-1] = T
    terms = torch.zeros(n, dtype=torch.float64)
    for low, high in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        t = torch.randint(low, high, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t = diffusion.q_sample(x0, t, noise=noise)
        p = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
        terms += (high - low) * diffusion.vb_terms_bpd(p, x0, x_t, t).double()
    t0 = torch.zeros(n, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_1 = diffusion.q_sample(x0, t0, noise=noise)
    p = diffusion.p_mean_variance(model, x_1, t0, clip_denoised=clip_denoised)
    decoder = diffusion.vb_terms_bpd(p, x0, x_1, t0).double()
    prior = diffusion.prior_bpd(x0).double()
    return {
        "total": prior + decoder + terms,
        "prior": prior,
        "decoder": decoder,
        "diffusion": terms,
    }


def gaussian_bits_per_dim(
    train: torch.Tensor,
    test: torch.Tensor,
    diagonal: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Bits/dim (N_test,) of 8-bit test images under a Gaussian fitted to the training images,
    after uniform dequantisation (Theis et al. 2016): with v the pixel values in {0, ..., 255}
    and u ~ U[0, 1)^D,

    .. math:: -\log_2 P(v) \le \mathbb E_u\big[-\log_2 p(v + u)\big],

    so :math:`-\log_2 p(v + u) / D` for one u per image is an unbiased estimate of an upper
    bound on the discrete model's bits/dim, comparable with the uniform 8 bits and with a
    diffusion model's bound. The Gaussian N(μ, Σ) is fitted (mean, unbiased covariance; only
    its diagonal when ``diagonal``) to the dequantised training images. train, test: (N, C, H,
    W) in [-1, 1] on the 8-bit grid.
    """

    def dequantised(images: torch.Tensor) -> torch.Tensor:
        values = ((images.flatten(1).double() + 1) * 127.5).round()
        return values + torch.rand(
            values.shape, generator=generator, dtype=values.dtype
        )

    y_train, y_test = dequantised(train), dequantised(test)
    mean, covariance = gaussian_stats(y_train)
    if diagonal:
        covariance = torch.diag(covariance.diagonal())
    dim = y_train.shape[1]
    cholesky = torch.linalg.cholesky(covariance)
    centred = torch.linalg.solve_triangular(
        cholesky, (y_test - mean).T, upper=False
    )  # (D, N_test)
    nats = 0.5 * (
        (centred**2).sum(0)
        + 2 * cholesky.diagonal().log().sum()
        + dim * math.log(2 * math.pi)
    )
    return nats / (dim * math.log(2.0))
