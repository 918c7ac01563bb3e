"""The shipped classifiers whose features define the course's image metrics (chapter 08).

* :class:`DigitsClassifier`: a small CNN on the 16×16 digits (64-d features), behind
  :func:`ddpm_course.metrics.digits_fd`.
* :class:`FashionClassifier`: a small CNN on Fashion-MNIST's 28×28 images (128-d features),
  behind :func:`ddpm_course.metrics.fashion_fd` and :func:`ddpm_course.metrics.fashion_kid`.

Each is loaded once (CPU, eval mode) from ``weights/``; ``python -m ddpm_course.classifiers
--model digits|fashion`` retrains it (the commands are in ``weights/MODEL_CARDS.md``).
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
    "FashionClassifier",
    "load_digits_classifier",
    "load_fashion_classifier",
    "train_digits_classifier",
    "train_fashion_classifier",
    "CLASSIFIER_PATH",
    "FASHION_CLASSIFIER_PATH",
]


CLASSIFIER_PATH = Path(__file__).parent / "weights" / "digits_classifier.safetensors"


CLASSIFIER_COMMAND = "python -m ddpm_course.classifiers --out ddpm_course/weights/digits_classifier.safetensors"


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


FASHION_CLASSIFIER_PATH = (
    Path(__file__).parent / "weights" / "fashion-classifier.safetensors"
)


FASHION_CLASSIFIER_COMMAND = (
    "OMP_NUM_THREADS=1 python -m ddpm_course.classifiers --model fashion "
    "--out ddpm_course/weights/fashion-classifier.safetensors"
)


class FashionClassifier(nn.Module):
    """A small CNN for 28×28×1 Fashion-MNIST images in [-1, 1]: ``features(x) -> (N, 128)``,
    ``forward(x) -> (N, 10)`` logits.

    Levels 28 → 14 → 7 → 3 (convolutions of 32, 64 and 128 channels, each followed by ReLU and a
    2×2 max-pool), then a 128-d ReLU layer: the features of the Fréchet distance and KID.
    """

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 3x3
        )
        self.fc = nn.Linear(128 * 3 * 3, self.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(
                "the Fashion-MNIST classifier takes (N, 1, 28, 28) images in [-1, 1], "
                f"got {tuple(x.shape)}"
            )
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@lru_cache(maxsize=1)
def load_fashion_classifier() -> FashionClassifier:
    """The shipped Fashion-MNIST classifier (CPU, eval mode)."""
    from safetensors.torch import load_file

    if not FASHION_CLASSIFIER_PATH.exists():
        raise FileNotFoundError(
            f"{FASHION_CLASSIFIER_PATH} is missing; rebuild it with "
            f"`{FASHION_CLASSIFIER_COMMAND}`"
        )
    model = FashionClassifier()
    model.load_state_dict(
        {k: v.float() for k, v in load_file(FASHION_CLASSIFIER_PATH).items()}
    )
    return model.eval()


def train_fashion_classifier(
    epochs: int = 8, seed: int = 0, progress: bool = True
) -> tuple[FashionClassifier, float]:
    """Train :class:`FashionClassifier` on the 60,000 training images (random horizontal flips
    and ±2-pixel shifts); returns it and its accuracy on the 10,000 test images."""
    from tqdm.auto import tqdm

    from .data import fashion_mnist

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    model = FashionClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batches = -(-x_train.shape[0] // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=epochs * batches
    )
    for _ in tqdm(range(epochs), disable=not progress, desc="classifier"):
        model.train()
        for index in torch.randperm(x_train.shape[0], generator=generator).split(128):
            batch = x_train[index]
            flip = torch.rand(batch.shape[0], generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=shifts, dims=(2, 3))
            loss = F.cross_entropy(model(batch), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat(
            [model(chunk).argmax(1) for chunk in x_test.split(1000)]
        )
    return model, (predictions == y_test).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(
        description="Train a shipped classifier of the metrics: digits (digits_fd) or "
        "fashion (fashion_fd, fashion_kid)."
    )
    parser.add_argument("--model", choices=("digits", "fashion"), default="digits")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.model == "fashion":
        model, accuracy = train_fashion_classifier(args.epochs or 8, args.seed)
        args.out = args.out or FASHION_CLASSIFIER_PATH
    else:
        model, accuracy = train_digits_classifier(args.epochs or 30, args.seed)
        args.out = args.out or CLASSIFIER_PATH
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"test accuracy {accuracy:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
