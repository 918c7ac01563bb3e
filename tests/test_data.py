"""ddpm_course.data: the offline digits, the 2-D toy sets, and the torchvision image sets read from
fake files in torchvision's on-disk format (nothing is downloaded)."""

from __future__ import annotations

import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ddpm_course import data
from ddpm_course.data import DigitsDataset, digits, digits_split, toy_2d

FLOAT32_TOL = (
    1e-6  # values in [-1, 1] computed in float32: a few ulps (6e-8 each) of rounding
)


# ---------------------------------------------------------------------------------- digits
def test_digits_train_images_have_shape_n_1_16_16_float32_and_int64_labels():
    images, labels = digits()
    assert images.shape == (1497, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1497,) and labels.dtype == torch.int64


def test_digits_range_is_exactly_minus_one_to_one_and_both_ends_are_reached():
    images, _ = digits(split="all")
    assert images.min().item() == -1.0  # blank pixels (0/16)
    assert images.max().item() == 1.0  # 2×2 blocks of 16/16 interpolate to exactly 1


def test_digits_split_sizes_are_1497_train_300_test_1797_all():
    assert [digits(split=s)[0].shape[0] for s in ("train", "test", "all")] == [
        1497,
        300,
        1797,
    ]


def test_digits_test_split_holds_30_images_of_each_digit():
    _, labels = digits(split="test")
    assert torch.bincount(labels, minlength=10).tolist() == [30] * 10


def test_digits_train_and_test_are_disjoint_and_cover_the_whole_set():
    train, test = digits_split("train"), digits_split("test")
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))


def test_digits_are_identical_between_calls():
    first, second = digits(split="test"), digits(split="test")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


FROZEN_TEST_INDEX_SUM = (
    259751  # sum of the 300 test indices, recorded when the split was introduced
)


def test_digits_test_split_is_frozen():
    # Regression values recorded when the split was introduced: numpy's RandomState stream is fixed
    # across versions, so a change here means the split itself changed (and results are no longer comparable).
    test = digits_split("test")
    assert test[:10].tolist() == [3, 7, 13, 19, 36, 43, 48, 53, 55, 60]
    assert int(test.sum()) == FROZEN_TEST_INDEX_SUM


def test_digits_labels_match_scikit_learn():
    reference = load_digits()
    indices = digits_split("train")
    _, labels = digits(split="train")
    assert labels.tolist() == reference.target[indices.numpy()].tolist()


def _bilinear_half_pixel(image: np.ndarray, size: int) -> np.ndarray:
    """Hand-written bilinear resize with half-pixel centres (align_corners=False): the output pixel i
    samples the input at s = (i + 1/2) · in/out - 1/2, clamped to [0, in - 1] (PyTorch's convention)."""
    n_in = image.shape[0]

    def taps(i: int) -> tuple[int, int, float]:
        s = max((i + 0.5) * n_in / size - 0.5, 0.0)
        low = min(math.floor(s), n_in - 1)
        return low, min(low + 1, n_in - 1), s - low

    out = np.zeros((size, size))
    for i in range(size):
        r0, r1, wr = taps(i)
        for j in range(size):
            c0, c1, wc = taps(j)
            out[i, j] = ((1 - wr) * (1 - wc) * image[r0, c0] + (1 - wr) * wc * image[r0, c1]
                         + wr * (1 - wc) * image[r1, c0] + wr * wc * image[r1, c1])  # fmt: skip
    return out


@pytest.mark.parametrize("size", [16, 12, 5])
def test_digits_resize_equals_a_hand_written_bilinear_interpolation(size):
    index = 42
    expected = 2 * _bilinear_half_pixel(load_digits().images[index] / 16.0, size) - 1
    images, _ = digits(size=size, split="all")
    np.testing.assert_allclose(images[index, 0].numpy(), expected, atol=FLOAT32_TOL)


def test_digits_pixel_1_1_at_16_is_the_9_1_3_3_weighting_of_its_four_neighbours():
    # Upscaling 8 -> 16, output pixel 1 samples input coordinate 1.5/2 - 0.5 = 0.25: weights 3/4 and 1/4
    # per axis, so the pixel is (9 v00 + 3 v01 + 3 v10 + v11) / 16 of the 8×8 image (v / 16, then 2x - 1).
    v = load_digits().images[7] / 16.0
    expected = 2 * (9 * v[0, 0] + 3 * v[0, 1] + 3 * v[1, 0] + v[1, 1]) / 16 - 1
    images, _ = digits(size=16, split="all")
    assert images[7, 0, 1, 1].item() == pytest.approx(expected, abs=FLOAT32_TOL)


def test_digits_at_size_8_are_the_raw_pixels_scaled_to_minus_one_one():
    images, _ = digits(size=8, split="all")
    expected = torch.from_numpy(load_digits().images / 16.0 * 2 - 1).float()
    torch.testing.assert_close(images[:, 0], expected, atol=FLOAT32_TOL, rtol=0)


def test_digits_dataset_yields_image_label_pairs_of_the_split():
    dataset = DigitsDataset(split="test")
    images, labels = digits(split="test")
    image, label = dataset[5]
    assert len(dataset) == 300
    assert torch.equal(image, images[5]) and label == int(labels[5])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"split": "valid"}, "'train', 'test', 'all'"), ({"size": 0}, "positive integer")],
)
def test_digits_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digits(**kwargs)


# ------------------------------------------------------------------------------ 2-D toys
N_TOY = 4000


def _toy(name: str, seed: int = 0) -> torch.Tensor:
    return toy_2d(name, N_TOY, generator=torch.Generator().manual_seed(seed))


def _distance_to_curve(points: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Distance from each point (n, 2) to a densely sampled curve (m, 2)."""
    return torch.cdist(points.double(), curve.double()).min(dim=1).values


@pytest.mark.parametrize("name", data.TOY_2D)
def test_toy_2d_gives_n_float32_points_of_roughly_unit_scale(name):
    points = _toy(name)
    assert points.shape == (N_TOY, 2) and points.dtype == torch.float32
    std = points.std(dim=0)
    assert bool(((std > 0.4) & (std < 1.5)).all()), (
        f"per-coordinate std {std.tolist()} is not roughly 1"
    )


@pytest.mark.parametrize("name", data.TOY_2D)
def test_toy_2d_is_reproducible_with_a_generator_and_varies_with_the_seed(name):
    assert torch.equal(_toy(name, seed=3), _toy(name, seed=3))
    assert not torch.equal(_toy(name, seed=3), _toy(name, seed=4))


def test_toy_2d_swiss_roll_lies_near_its_spiral_and_is_centred():
    theta = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 20000, dtype=torch.float64)
    spiral = (
        torch.stack(
            [
                theta * torch.cos(theta) - 2,
                theta * torch.sin(theta) - 2 / (3 * math.pi),
            ],
            dim=1,
        )
        / 7
    )
    points = _toy("swiss_roll")
    # noise 0.5/7 per coordinate: a 2-D Gaussian exceeds 6 std with probability e^-18 per point
    assert _distance_to_curve(points, spiral).max().item() < 6 * 0.5 / 7
    # mean of (θ cos θ, θ sin θ) is (2, 2/(3π)) in closed form, so the centred roll has mean 0
    # within 5 standard errors (std about 1 per coordinate, N_TOY points)
    assert points.double().mean(dim=0).abs().max().item() < 5 / math.sqrt(N_TOY)


def test_toy_2d_two_moons_lie_near_their_two_half_circles():
    theta = torch.linspace(0, math.pi, 5000, dtype=torch.float64)
    upper = torch.stack([torch.cos(theta) - 0.5, torch.sin(theta) - 0.25], dim=1)
    lower = torch.stack([0.5 - torch.cos(theta), 0.25 - torch.sin(theta)], dim=1)
    points = _toy("two_moons")
    distance = _distance_to_curve(points, torch.cat([upper, lower]))
    assert distance.max().item() < 6 * 0.05  # 6 noise std; P(|z| > 6) = e^-18 in 2-D
    # each moon gets half of the points: binomial(N, 1/2), 5 standard deviations
    near_upper = _distance_to_curve(points, upper) < _distance_to_curve(points, lower)
    assert abs(near_upper.double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(N_TOY)


def test_toy_2d_eight_gaussians_cluster_at_the_eight_centres_with_second_moment_one():
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = math.sqrt(2) * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    points = _toy("8gaussians").double()
    distances = torch.cdist(points, centres)
    assert distances.min(dim=1).values.max().item() < 6 * 0.1  # 6 std of each component
    counts = torch.bincount(distances.argmin(dim=1), minlength=8).double()
    expected = N_TOY / 8
    assert (counts - expected).abs().max().item() < 5 * math.sqrt(
        N_TOY * (1 / 8) * (7 / 8)
    )  # 5 binomial std
    # E[x_1^2] = r^2/2 + s^2 = 1 + 0.01; its sample estimate has std below sqrt(E[x^4]/N) < 1.5/sqrt(N)
    second_moment = (points**2).mean(dim=0)
    assert (second_moment - 1.01).abs().max().item() < 5 * 1.5 / math.sqrt(N_TOY)


def test_toy_2d_checkerboard_fills_only_the_eight_even_squares_of_the_board():
    points = _toy("checkerboard").double()
    assert bool(((points >= -2) & (points < 2)).all())
    squares = torch.floor(points).long()
    assert bool(((squares.sum(dim=1) % 2) == 0).all())
    occupied = {tuple(s) for s in squares.tolist()}
    assert occupied == {
        (i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0
    }


def test_toy_2d_refuses_an_unknown_name_and_lists_the_names():
    with pytest.raises(
        ValueError, match="'swiss_roll', 'two_moons', '8gaussians', 'checkerboard'"
    ):
        toy_2d("spirals", 10)


def test_toy_2d_refuses_a_non_positive_n():
    with pytest.raises(ValueError, match="positive integer"):
        toy_2d("two_moons", 0)


# ----------------------------------------------------------- torchvision sets, fake files
def _write_idx(path, array: np.ndarray) -> None:
    """An IDX file as LeCun's MNIST distributes it: magic 0x08 (unsigned byte) and the rank, big-endian sizes, data."""
    with open(path, "wb") as file:
        file.write(struct.pack(">I", 0x0800 + array.ndim))
        file.write(struct.pack(f">{array.ndim}I", *array.shape))
        file.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder: str, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
    labels = np.arange(n) % 10
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return images, labels


def test_mnist_reads_idx_files_into_minus_one_one(tmp_path):
    images, labels = _fake_mnist(tmp_path, "MNIST")
    dataset = data.mnist(tmp_path, train=True, download=False)
    assert len(dataset) == len(labels)
    for i in range(len(labels)):
        image, label = dataset[i]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        expected = torch.from_numpy(images[i] / 255.0 * 2 - 1).float()
        torch.testing.assert_close(image[0], expected, atol=FLOAT32_TOL, rtol=0)
        assert label == labels[i]
    first, _ = dataset[0]
    assert first.min().item() == -1.0 and first.max().item() == 1.0


def test_mnist_size_option_resizes_and_stays_in_range(tmp_path):
    _fake_mnist(tmp_path, "MNIST")
    image, _ = data.mnist(tmp_path, train=False, download=False, size=32)[2]
    assert image.shape == (1, 32, 32)
    assert -1.0 <= image.min().item() and image.max().item() <= 1.0


def test_mnist_without_files_and_download_false_raises(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        data.mnist(tmp_path, download=False)


def _fake_cifar10(
    root, n_per_batch: int = 3
) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(2)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        rows = rng.randint(0, 256, size=(n_per_batch, 3 * 32 * 32)).astype(
            np.uint8
        )  # R, G, B planes, row-major
        labels = [(k + i) % 10 for i in range(n_per_batch)]
        with open(folder / name, "wb") as file:
            pickle.dump({"data": rows, "labels": labels}, file)
        batches[name] = (rows, labels)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            },
            file,
        )
    return batches


@pytest.fixture
def accept_fake_cifar_files(monkeypatch):
    """torchvision's CIFAR10 checks the MD5 sum of every batch file (and of batches.meta) even with
    download=False, which our fake files cannot pass; accept any file that exists instead."""
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(
        cifar_module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


def test_cifar10_reads_pickled_batches_into_minus_one_one(
    tmp_path, accept_fake_cifar_files
):
    batches = _fake_cifar10(tmp_path)
    train = data.cifar10(tmp_path, train=True, download=False)
    test = data.cifar10(tmp_path, train=False, download=False)
    assert (len(train), len(test)) == (15, 3)
    rows, labels = batches["data_batch_2"]
    image, label = train[3 + 1]  # second image of the second batch
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    expected = torch.from_numpy(rows[1].reshape(3, 32, 32) / 255.0 * 2 - 1).float()
    torch.testing.assert_close(image, expected, atol=FLOAT32_TOL, rtol=0)
    assert label == labels[1]
    assert test[0][1] == batches["test_batch"][1][0]


def test_cifar10_random_flip_gives_the_image_or_its_mirror(
    tmp_path, accept_fake_cifar_files
):
    _fake_cifar10(tmp_path)
    plain = data.cifar10(tmp_path, download=False)[0][0]
    flipping = data.cifar10(tmp_path, download=False, random_flip=True)
    torch.manual_seed(0)
    draws = [flipping[0][0] for _ in range(20)]
    mirrored = [torch.equal(d, plain.flip(-1)) for d in draws]
    assert all(m or torch.equal(d, plain) for m, d in zip(mirrored, draws, strict=True))
    assert 0 < sum(mirrored) < 20  # P(all 20 equal) = 2 · 2^-20 for a fair coin


def test_cifar10_with_fake_files_fails_torchvisions_checksum_without_the_patch(
    tmp_path,
):
    _fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        data.cifar10(tmp_path, download=False)
