r"""Data for the course: offline handwritten digits, 2-D toy distributions, and torchvision image sets.

* :func:`digits`: scikit-learn's bundled handwritten digits (1,797 images of 8×8 pixels, no
  download), resized to 16×16 by default: the CPU data set of every chapter. A fixed, stratified
  train/test split (:func:`digits_split`) that never changes.
* :func:`toy_2d`: swiss roll, two moons, 8 Gaussians and a checkerboard in 2-D, each of roughly
  unit scale, for the score-matching and 2-D diffusion pages.
* :func:`fashion_mnist`: Fashion-MNIST's 28×28 clothes (60,000 + 10,000, ten classes), the
  image data of chapters 04–10, read offline from Debian's ``dataset-fashion-mnist`` package
  (or a folder the caller names); torchvision downloads it only where allowed.
* :func:`mnist`, :func:`cifar10`: the torchvision data sets with images as (C, H, W) float32
  tensors in [-1, 1] (``download=True`` fetches them; the GPU chapters).
* :func:`load_dataset`, :class:`ResumableSampler` and :func:`resumable_loader`: the Trainer's
  data (chapter 04), in an order that a resumed run continues exactly.

Images are NCHW in [-1, 1], the range the models work in (see DESIGN.md, Conventions).
"""

from __future__ import annotations

import itertools
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from .config import NATIVE_IMAGE_SIZE, TrainConfig
from .utils import check_choice

__all__ = [
    "digits",
    "digits_split",
    "DigitsDataset",
    "DIGITS_SPLITS",
    "DIGITS_TEST_PER_CLASS",
    "toy_2d",
    "TOY_2D",
    "mnist",
    "fashion_mnist",
    "fashion_mnist_folder",
    "read_idx",
    "FASHION_MNIST_CLASSES",
    "cifar10",
    "load_dataset",
    "as_dataset",
    "ResumableSampler",
    "resumable_loader",
]

DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TEST_PER_CLASS = 30  # 10 classes × 30 = 300 test images, 1,497 for training
_DIGITS_SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as read-only arrays: images (1797, 8, 8) float64 in {0, ..., 16}, labels (1797,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digits_split(split: str = "train") -> torch.Tensor:
    """Indices into scikit-learn's ``load_digits()`` order of the images in ``split``: (N,) int64, ascending.

    The test split holds 30 images of each digit, chosen by a permutation of each class's indices
    from ``numpy.random.RandomState(0)`` (whose stream numpy keeps fixed across versions); the
    train split holds the other 1,497; ``"all"`` holds all 1,797.
    """
    check_choice("digits split", split, DIGITS_SPLITS)
    _, labels = _load_digits()
    if split == "all":
        return torch.arange(labels.shape[0])
    rng = np.random.RandomState(_DIGITS_SPLIT_SEED)
    test = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == digit))[:DIGITS_TEST_PER_CLASS]
            for digit in range(10)
        ]
    )
    is_test = np.zeros(labels.shape[0], dtype=bool)
    is_test[test] = True
    return torch.from_numpy(
        np.flatnonzero(is_test if split == "test" else ~is_test)
    ).long()


def digits(size: int = 16, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Handwritten digits from scikit-learn (offline): images (N, 1, size, size) float32 in [-1, 1], labels (N,) int64.

    Each 8×8 image with pixel values v in {0, ..., 16} becomes :math:`2\,\mathrm{resize}(v/16) - 1`,
    where resize is bilinear interpolation to size×size
    (``F.interpolate(..., mode="bilinear", align_corners=False)``; the identity for size 8).
    ``split`` is ``"train"`` (1,497 images), ``"test"`` (300) or ``"all"`` (1,797); see :func:`digits_split`.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(
            f"size must be a positive integer (pixels per side), got {size!r}"
        )
    indices = digits_split(split).numpy()
    images, labels = _load_digits()
    x = torch.from_numpy(images[indices] / 16.0).float()[:, None]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.from_numpy(labels[indices].copy())


class DigitsDataset(Dataset):
    """:func:`digits` as a ``torch.utils.data.Dataset`` of (image (1, size, size) in [-1, 1], label int) pairs."""

    def __init__(self, size: int = 16, split: str = "train") -> None:
        self.images, self.labels = digits(size, split)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


# ----------------------------------------------------------------------------- 2-D toys
TOY_2D = ("swiss_roll", "two_moons", "8gaussians", "checkerboard")
SWISS_ROLL_SCALE = (
    7.0  # divides the roll's coordinates (std about 7) down to about unit scale
)
SWISS_ROLL_NOISE = 0.5  # std of the noise on the roll, before the scaling
# mean of (θ cos θ, θ sin θ) for θ ~ U(1.5π, 4.5π): [θ sin θ + cos θ, sin θ - θ cos θ] over the range, / 3π
SWISS_ROLL_MEAN = torch.tensor([2.0, 2.0 / (3.0 * math.pi)], dtype=torch.float64)
MOONS_NOISE = 0.05
EIGHT_GAUSSIANS_RADIUS = math.sqrt(
    2.0
)  # so that E[x_1^2] = radius^2/2 + std^2 is about 1
EIGHT_GAUSSIANS_STD = 0.1


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""n points of a 2-D toy distribution: (n, 2) float32, each coordinate of roughly unit scale.

    * ``"swiss_roll"``: :math:`(\theta\cos\theta - 2, \theta\sin\theta - \tfrac{2}{3\pi}) + 0.5 z`
      scaled by 1/7, with :math:`\theta = 1.5\pi(1 + 2u)`, u ~ U(0, 1), z ~ N(0, I)
      (scikit-learn's ``make_swiss_roll`` seen from above, centred: the shift is its mean).
    * ``"two_moons"``: half circles :math:`(\cos\theta, \sin\theta)` and
      :math:`(1 - \cos\theta, \tfrac12 - \sin\theta)`, θ ~ U(0, π), one of the two with
      probability ½, shifted by :math:`(-\tfrac12, -\tfrac14)` and plus 0.05 z (``make_moons``, centred).
    * ``"8gaussians"``: a mixture of N(c_k, 0.1² I) with equal weights and means
      :math:`c_k = \sqrt2(\cos(k\pi/4), \sin(k\pi/4))`, k = 0..7.
    * ``"checkerboard"``: uniform on the 8 black squares of a 4×4 board covering [-2, 2]², those
      with :math:`\lfloor x_1\rfloor + \lfloor x_2\rfloor` even.

    ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible.
    """
    check_choice("toy data set", name, TOY_2D)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(
            f"n must be a positive integer (the number of points), got {n!r}"
        )

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    if name == "swiss_roll":
        theta = 1.5 * math.pi * (1 + 2 * uniform(n))
        roll = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1)
        points = (
            roll - SWISS_ROLL_MEAN + SWISS_ROLL_NOISE * normal(n, 2)
        ) / SWISS_ROLL_SCALE
    elif name == "two_moons":
        theta = math.pi * uniform(n)
        lower = uniform(n) < 0.5
        x1 = torch.where(lower, 1 - torch.cos(theta), torch.cos(theta))
        x2 = torch.where(lower, 0.5 - torch.sin(theta), torch.sin(theta))
        points = torch.stack([x1 - 0.5, x2 - 0.25], dim=1) + MOONS_NOISE * normal(n, 2)
    elif name == "8gaussians":
        angle = torch.randint(0, 8, (n,), generator=generator).double() * (math.pi / 4)
        centres = EIGHT_GAUSSIANS_RADIUS * torch.stack(
            [torch.cos(angle), torch.sin(angle)], dim=1
        )
        points = centres + EIGHT_GAUSSIANS_STD * normal(n, 2)
    else:
        # column i in {-2, ..., 1}, then a row j of the same parity, so that i + j is even
        column = torch.randint(-2, 2, (n,), generator=generator)
        row = 2 * torch.randint(-1, 1, (n,), generator=generator) + column.remainder(2)
        points = torch.stack([column, row], dim=1).double() + uniform(n, 2)
    return points.float()


# ------------------------------------------------------------------ torchvision image sets
def _to_minus_one_one(size: int | None, random_flip: bool):
    """PIL image -> (C, H, W) float32 in [-1, 1]: optional bilinear resize and horizontal flip, then 2 x - 1."""
    from torchvision import transforms

    steps = []
    if size is not None:
        steps.append(
            transforms.Resize(
                (size, size),
                interpolation=transforms.InterpolationMode.BILINEAR,
                antialias=True,
            )
        )
    if random_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5], std=[0.5]),
    ]  # [0, 1] -> [-1, 1]
    return transforms.Compose(steps)


def _check_size(size: int | None) -> None:
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or size < 1
    ):
        raise ValueError(
            f"size must be a positive integer or None (keep the native size), got {size!r}"
        )


def mnist(
    root: str | Path,
    train: bool = True,
    download: bool = True,
    size: int | None = None,
    random_flip: bool = False,
):
    """torchvision's MNIST under ``root`` (files in ``root/MNIST/raw``): (image (1, H, W) in [-1, 1], label int) pairs.

    Images are 28×28, or size×size when ``size`` is given (bilinear, e.g. 32 for a U-Net with three
    down-samplings). ``download=True`` fetches the files when they are missing (needs the network).
    """
    from torchvision import datasets

    _check_size(size)
    return datasets.MNIST(
        str(root),
        train=train,
        download=download,
        transform=_to_minus_one_one(size, random_flip),
    )


# ------------------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FASHION_MNIST_ENV = "DDPM_COURSE_DATA_DIR"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SPLITS = ("train", "test")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_COUNTS = {"train": 60_000, "test": 10_000}


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, also in torchvision's ``FashionMNIST/raw`` below it."""
    for base in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, plain or gzip) as a read-only uint8 array.

    Header: two zero bytes, the type code 0x08 (unsigned byte), the rank r, then r big-endian
    uint32 sizes; the data follow in C order.
    """
    import gzip

    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number)"
        )
    rank = raw[3]
    shape = tuple(
        int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)
    )
    offset = 4 + 4 * rank
    if len(raw) - offset != math.prod(shape):
        raise ValueError(
            f"{path} holds {len(raw) - offset} bytes of data, its header says {shape}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)
    return array


def _fashion_folders(data_dir: str | Path | None) -> list[tuple[str, Path]]:
    folders = []
    if data_dir is not None:
        folders.append(("data_dir", Path(data_dir)))
    if os.environ.get(FASHION_MNIST_ENV):
        folders.append((FASHION_MNIST_ENV, Path(os.environ[FASHION_MNIST_ENV])))
    folders.append(("Debian's dataset-fashion-mnist", FASHION_MNIST_DEBIAN_DIR))
    return folders


def _fashion_download(split: str) -> Path:
    """torchvision's download into ``~/.cache/ddpm_course`` (needs the network)."""
    from torchvision import datasets

    root = Path.home() / ".cache" / "ddpm_course"
    datasets.FashionMNIST(str(root), train=split == "train", download=True)
    return root


@lru_cache(maxsize=4)
def _fashion_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = _FASHION_FILES[split]
    images = read_idx(_idx_file(folder, images_stem))
    labels = read_idx(_idx_file(folder, labels_stem))
    if images.shape != (_FASHION_COUNTS[split], 28, 28) or labels.shape != (
        _FASHION_COUNTS[split],
    ):
        raise ValueError(
            f"Fashion-MNIST {split} files in {folder} hold images {images.shape} and labels "
            f"{labels.shape}; expected ({_FASHION_COUNTS[split]}, 28, 28) and "
            f"({_FASHION_COUNTS[split]},)"
        )
    return images, labels


def fashion_mnist_folder(
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool | None = None,
) -> Path:
    """The folder that :func:`fashion_mnist` reads ``split`` from (see there for the order)."""
    check_choice("Fashion-MNIST split", split, FASHION_MNIST_SPLITS)
    searched = []
    for origin, folder in _fashion_folders(data_dir):
        if all(_idx_file(folder, stem) for stem in _FASHION_FILES[split]):
            return folder
        searched.append(f"{folder} ({origin})")
    if download is None:
        from .profiles import profile

        download = profile() == "full"
    if download:
        return _fashion_download(split)
    raise FileNotFoundError(
        f"Fashion-MNIST's {split} files ({', '.join(_FASHION_FILES[split])}, plain or .gz) "
        f"are in none of: {'; '.join(searched)}. Either name a folder that holds them "
        f"(data_dir=... / --data-dir, or the environment variable {FASHION_MNIST_ENV}), "
        "or install Debian's copy (`sudo apt-get install dataset-fashion-mnist`, or "
        "`make data-deps`), or let torchvision download them where a network exists "
        "(download=True, the default in the `full` profile)."
    )


def fashion_mnist(
    split: str = "train",
    data_dir: str | Path | None = None,
    size: int | None = None,
    download: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Fashion-MNIST (Xiao et al. 2017): images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64.

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000); class names in
    :data:`FASHION_MNIST_CLASSES`. A pixel value v in {0, ..., 255} becomes :math:`2v/255 - 1`;
    ``size`` resizes to size×size: smaller by area averaging (14 is 2×2 average pooling, the
    degradation of chapter 06's super-resolution), larger bilinearly.

    The IDX files (plain or gzip, also in torchvision's ``FashionMNIST/raw`` layout) are read
    from the first of: ``data_dir``; the folder in ``$DDPM_COURSE_DATA_DIR``; Debian's
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
    With none of them, torchvision downloads them when ``download`` is true (default: only in
    the ``full`` profile, so tests and the ``quick`` profile never touch the network);
    otherwise a ``FileNotFoundError`` names all three.
    """
    _check_size(size)
    folder = fashion_mnist_folder(split, data_dir, download)
    images, labels = _fashion_arrays(folder.resolve(), split)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None] * 2 - 1
    if (
        size is not None and size < 28
    ):  # each output pixel the mean of the pixels it covers
        x = F.interpolate(x, size=(size, size), mode="area")
    elif size is not None and size > 28:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, torch.from_numpy(labels.astype(np.int64))


def cifar10(
    root: str | Path,
    train: bool = True,
    download: bool = True,
    size: int | None = None,
    random_flip: bool = False,
):
    """torchvision's CIFAR-10 (files in ``root/cifar-10-batches-py``): (image (3, 32, 32) in [-1, 1], label int) pairs.

    ``random_flip=True`` flips images horizontally with probability ½, the augmentation of Ho et
    al. 2020 for CIFAR-10. torchvision checks the MD5 sum of every file, also with ``download=False``.
    """
    from torchvision import datasets

    _check_size(size)
    return datasets.CIFAR10(
        str(root),
        train=train,
        download=download,
        transform=_to_minus_one_one(size, random_flip),
    )


# ------------------------------------------------------- the Trainer's data (chapter 04)
class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way, for exact resume.

    Epoch e visits a permutation seeded by ``seed + e`` (the same on every process), of which rank
    r takes every ``num_replicas``-th index from r. ``set_epoch(e, skip=k)`` leaves out the first k
    indices of this rank's share: the ones consumed before the checkpoint.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def load_dataset(config: TrainConfig) -> Dataset:
    """The training split of ``config.dataset`` as (image (C, H, W) in [-1, 1], label) pairs."""
    if config.dataset == "digits":
        return TensorDataset(*digits(size=config.image_size, split="train"))
    if config.dataset == "fashion_mnist":
        if config.random_flip:
            raise ValueError(
                "random_flip is for torchvision data sets; Fashion-MNIST is read as tensors"
            )
        size = None if config.image_size == 28 else config.image_size
        return TensorDataset(*fashion_mnist("train", config.data_dir, size=size))
    size = (
        None
        if config.image_size == NATIVE_IMAGE_SIZE[config.dataset]
        else config.image_size
    )
    loader = {"mnist": mnist, "cifar10": cifar10}[config.dataset]
    return loader(
        config.data_dir,
        train=True,
        download=True,
        size=size,
        random_flip=config.random_flip,
    )


def as_dataset(
    dataset: Dataset | torch.Tensor | tuple | None, config: TrainConfig
) -> Dataset:
    """``dataset`` as a Dataset: the Trainer's ``dataset`` argument (None: :func:`load_dataset`)."""
    if dataset is None:
        return load_dataset(config)
    if isinstance(dataset, torch.Tensor):
        return TensorDataset(dataset)
    if isinstance(dataset, (tuple, list)) and all(
        isinstance(t, torch.Tensor) for t in dataset
    ):
        return TensorDataset(*dataset)
    if isinstance(dataset, Dataset):
        return dataset
    raise TypeError(
        f"dataset must be a Dataset, an images tensor or an (images, labels) tuple; got {type(dataset).__name__}"
    )


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    world_size: int,
    rank: int,
    seed: int,
    loader_seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[ResumableSampler, DataLoader]:
    """This process's :class:`ResumableSampler` (epochs seeded by ``seed + epoch``) and the
    DataLoader of full batches of ``batch_size`` over it. Refuses a dataset too small for one
    batch per process."""
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    if sampler.num_samples < batch_size:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size} per "
            f"process; lower batch_size"
        )
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(loader_seed),
    )  # fmt: skip
    return sampler, loader
