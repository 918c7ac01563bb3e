r"""Evaluation: Fréchet distance in the feature space of a shipped digits classifier.

Chapter 08. The Fréchet distance between two sets of features fitted by Gaussians is

.. math:: \mathrm{FD} = \lVert\mu_1-\mu_2\rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}\big)

(Heusel et al. 2017; "FID" when the features come from Inception). Here the features are the 64-d
penultimate layer of a small CNN trained on the 16×16 digits (``weights/digits_classifier.safetensors``,
reproduced by ``python -m ddpm_course.metrics``). An FD means little alone: compare it with the
**floor**, the FD between real training images and the test split at the same sample size
(:func:`digits_fd_floor`). The floor is real against real, not a lower bound: an FD estimated
from n samples is biased upwards, by an amount that falls roughly like 1/n (Chong & Forsyth
2020), which is why the floor is taken at the models' n; and it moves with the subset drawn.
Samples can score below it: a model's samples may match the test split's feature mean and
covariance better than a random subset of training digits does (for instance with classes as
balanced as the test split), and one floor value is itself one draw.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DigitsClassifier",
    "frechet_distance",
    "gaussian_stats",
    "load_digits_classifier",
    "digits_features",
    "digits_fd",
    "digits_fd_floor",
    "train_digits_classifier",
    "class_accuracy",
    "within_class_diversity",
    "saturation",
    "seam_error",
    "CLASSIFIER_PATH",
]

CLASSIFIER_PATH = Path(__file__).parent / "weights" / "digits_classifier.safetensors"
CLASSIFIER_COMMAND = "python -m ddpm_course.metrics --out ddpm_course/weights/digits_classifier.safetensors"


class DigitsClassifier(nn.Module):
    """A small CNN for 16×16×1 digits in [-1, 1]: ``features(x) -> (N, 64)``, ``forward(x) -> (N, 10)`` logits."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.fc = nn.Linear(64 * 4 * 4, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 16, 16):
            raise ValueError(
                f"the digits classifier takes (N, 1, 16, 16) images in [-1, 1], got {tuple(x.shape)}"
            )
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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


@lru_cache(maxsize=1)
def load_digits_classifier() -> DigitsClassifier:
    """The shipped classifier (CPU, eval mode)."""
    from safetensors.torch import load_file

    if not CLASSIFIER_PATH.exists():
        raise FileNotFoundError(
            f"{CLASSIFIER_PATH} is missing; rebuild it with `{CLASSIFIER_COMMAND}`"
        )
    model = DigitsClassifier()
    model.load_state_dict(load_file(CLASSIFIER_PATH))
    return model.eval()


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


def train_digits_classifier(
    epochs: int = 30, seed: int = 0, progress: bool = True
) -> tuple[DigitsClassifier, float]:
    """Train the classifier on the digits train split (small shifts as augmentation); returns it and
    its accuracy on the test split."""
    from tqdm.auto import tqdm

    from .data import digits

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_train, y_train = digits(size=16, split="train")
    x_test, y_test = digits(size=16, split="test")
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in tqdm(range(epochs), disable=not progress, desc="classifier"):
        model.train()
        for index in torch.randperm(x_train.shape[0], generator=generator).split(64):
            shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
            batch = torch.roll(x_train[index], shifts=shifts, dims=(2, 3))
            loss = F.cross_entropy(model(batch), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(
        description="Train the shipped digits classifier used by digits_fd."
    )
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, accuracy = train_digits_classifier(args.epochs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"test accuracy {accuracy:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
