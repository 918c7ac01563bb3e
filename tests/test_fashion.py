"""Fashion-MNIST from its IDX files (Debian's package or a named folder) and the metric built on it.

The real-data tests read Debian's ``dataset-fashion-mnist`` (``make data-deps`` installs it; a
missing copy fails, never skips) and compare with facts published with the data set (Xiao et al.
2017: 6,000 training and 1,000 test images per class; the first training image is an ankle boot).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ddpm_course import data, metrics


def _write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    payload = struct.pack(">I", 0x0800 + array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as file:
        file.write(payload)


def _fake_fashion(folder, n_train=60_000, n_test=10_000, compress=True):
    """Fashion-MNIST-shaped files whose pixels encode the image index (so order is checkable)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        images[:, 27, 27] = 255
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(
            folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress
        )


def test_read_idx_round_trips_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    for compress, name in ((False, "a"), (True, "b.gz")):
        _write_idx(tmp_path / name, array, compress)
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), array)


def test_read_idx_rejects_a_wrong_magic_number_and_a_short_file(tmp_path):
    (tmp_path / "bad").write_bytes(
        b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4
    )
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4,), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(tmp_path / "short")


def test_a_named_folder_comes_before_the_environment_and_debian(tmp_path, monkeypatch):
    named, from_env = tmp_path / "named", tmp_path / "env"
    _fake_fashion(named, compress=False)
    _fake_fashion(from_env)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(from_env))
    assert data.fashion_mnist_folder("test", named) == named
    assert data.fashion_mnist_folder("test", tmp_path / "empty") == from_env
    images, labels = data.fashion_mnist("test", named)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.float32
    # pixel v -> 2 v / 255 - 1, in the files' order
    expected = torch.from_numpy((np.arange(10_000) % 256) / 255.0 * 2 - 1).float()
    torch.testing.assert_close(images[:, 0, 0, 0], expected, atol=1e-6, rtol=0)
    assert (images[:, 0, 27, 27] == 1).all() and labels.tolist()[:12] == [
        *range(10),
        0,
        1,
    ]


def test_torchvision_layout_is_found_below_the_named_folder(tmp_path):
    _fake_fashion(tmp_path / "FashionMNIST" / "raw", n_train=60_000)
    assert data.fashion_mnist_folder("train", tmp_path) == tmp_path
    images, _ = data.fashion_mnist("train", tmp_path)
    assert images.shape == (60_000, 1, 28, 28)


def test_no_copy_and_no_download_names_all_three_sources(tmp_path, monkeypatch):
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(FileNotFoundError) as error:
        data.fashion_mnist("train", tmp_path / "nowhere", download=False)
    message = str(error.value)
    for needle in (
        "nowhere",
        "no-debian",
        data.FASHION_MNIST_ENV,
        "apt-get install dataset-fashion-mnist",
        "download=True",
    ):
        assert needle in message


def test_the_quick_profile_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_COURSE_PROFILE", "quick")
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")

    def no_network(split):
        raise AssertionError("tried to download")

    monkeypatch.setattr(data, "_fashion_download", no_network)
    with pytest.raises(FileNotFoundError):
        data.fashion_mnist("test")


def test_wrong_counts_are_refused(tmp_path):
    _fake_fashion(tmp_path, n_train=10, n_test=10)
    with pytest.raises(ValueError, match="expected \\(10000, 28, 28\\)"):
        data.fashion_mnist("test", tmp_path)


# ------------------------------------------------------------------ Debian's real copy
def test_debian_copy_has_the_published_class_counts_and_first_labels():
    train_images, train_labels = data.fashion_mnist("train", download=False)
    test_images, test_labels = data.fashion_mnist("test", download=False)
    assert train_images.shape == (60_000, 1, 28, 28) and test_images.shape == (
        10_000,
        1,
        28,
        28,
    )
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    # the first training image is an ankle boot (9), the first test image too
    assert train_labels[0].item() == 9 and test_labels[0].item() == 9
    assert data.FASHION_MNIST_CLASSES[9] == "ankle boot"
    assert train_images.min().item() == -1.0 and train_images.max().item() == 1.0


def test_size_option_resizes_to_fourteen():
    images, _ = data.fashion_mnist("test", size=14, download=False)
    assert images.shape == (10_000, 1, 14, 14)
    full, _ = data.fashion_mnist("test", download=False)
    # a smaller size averages the pixels it covers: halving is 2x2 average pooling
    pooled = torch.nn.functional.avg_pool2d(full[:50], 2)
    torch.testing.assert_close(images[:50], pooled, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- the metric
def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a.b / d + 1)^3, by explicit loops (Bińkowski et al. 2018, Eq. 3)."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_the_estimator_written_out_by_loops():
    rng = np.random.RandomState(0)
    x, y = rng.randn(12, 3), rng.randn(12, 3) + 0.5
    mean, spread = metrics.kernel_inception_distance(
        torch.from_numpy(x), torch.from_numpy(y), subsets=3, subset_size=12
    )
    # full subsets: every subset is the whole set, so each estimate is the same number
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-10)
    assert spread == pytest.approx(0.0, abs=1e-12)


def test_kid_is_unbiased_for_equal_distributions_and_positive_for_different_ones():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=generator)
    b = torch.randn(4000, 8, generator=generator)
    # the subsets drawn from a seeded generator: the test does not hang on the global RNG's
    # state, which the tests run before it leave (a 3-sigma bound fails 0.3% of draws)
    same, same_spread = metrics.kernel_inception_distance(
        a, b, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(1)
    )
    # the mean of 20 unbiased estimates: within 3 standard errors of zero
    assert abs(same) < 3 * same_spread / 20**0.5
    shifted, _ = metrics.kernel_inception_distance(
        a,
        b + 0.5,
        subsets=20,
        subset_size=200,
        generator=torch.Generator().manual_seed(1),
    )
    assert shifted > 10 * same_spread


def test_shipped_fashion_classifier_reaches_ninety_percent_and_fits_in_a_megabyte():
    assert metrics.FASHION_CLASSIFIER_PATH.stat().st_size <= 1_000_000
    images, labels = data.fashion_mnist("test", download=False)
    accuracy = (metrics.fashion_predict(images) == labels).float().mean().item()
    assert accuracy >= 0.90


def test_fashion_floor_reports_median_and_range_over_draws():
    floor = metrics.fashion_fd_floor(500, draws=3, seed=0)
    assert floor["n"] == 500 and len(floor["values"]) == 3
    assert floor["min"] <= floor["median"] <= floor["max"]
    assert floor["values"][0] != floor["values"][1]  # independent draws
    # real training images against the test set are far closer than blurred ones at the same n
    images, _ = data.fashion_mnist("train", download=False)
    subset = images[
        torch.randperm(60_000, generator=torch.Generator().manual_seed(9))[:500]
    ]
    blurred = torch.nn.functional.avg_pool2d(subset, 3, stride=1, padding=1)
    assert metrics.fashion_fd(blurred) > 3 * floor["max"]


# ------------------------------------------------- precision, recall, memorisation (ch. 08)
def _brute_precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int
) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 written out with numpy loops: a point is in a manifold when it
    lies within some manifold point's distance to that point's k-th nearest neighbour."""

    def radii(points):
        out = []
        for p in points:
            d = sorted(np.linalg.norm(points - p, axis=1))
            out.append(d[k])  # d[0] = 0 is the point itself
        return np.array(out)

    def inside(queries, points, r):
        return np.mean(
            [np.any(np.linalg.norm(points - q, axis=1) <= r) for q in queries]
        )

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_matches_the_definition_written_out():
    rng = np.random.RandomState(3)
    real, fake = rng.randn(40, 2), rng.randn(30, 2) * 1.5 + 0.7
    result = metrics.precision_recall(
        torch.from_numpy(real), torch.from_numpy(fake), k=3
    )
    precision, recall = _brute_precision_recall(real, fake, 3)
    assert result["precision"] == pytest.approx(precision, abs=1e-12)
    assert result["recall"] == pytest.approx(recall, abs=1e-12)


def test_mode_dropping_keeps_precision_and_halves_recall():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    real = centres[torch.arange(400) % 2] + 0.3 * torch.randn(
        400, 2, generator=generator
    )
    one_mode = centres[0] + 0.3 * torch.randn(400, 2, generator=generator)
    result = metrics.precision_recall(real, one_mode, k=3)
    assert result["precision"] > 0.95  # every sample looks real ...
    assert 0.4 < result["recall"] < 0.6  # ... but half the real data is never reached


def test_nearest_neighbours_against_a_sorted_brute_force():
    rng = np.random.RandomState(4)
    queries, reference = rng.randn(7, 1, 3, 3), rng.randn(20, 1, 3, 3)
    distances, indices = metrics.nearest_neighbours(
        torch.from_numpy(queries), torch.from_numpy(reference), k=2
    )
    for i, q in enumerate(queries.reshape(7, -1)):
        d = np.linalg.norm(reference.reshape(20, -1) - q, axis=1)
        order = np.argsort(d)[:2]
        assert indices[i].tolist() == order.tolist()
        np.testing.assert_allclose(distances[i].numpy(), d[order], rtol=1e-10)


def test_memorisation_flags_copies_and_not_fresh_draws():
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(200, 16, generator=generator)
    held_out = torch.randn(100, 16, generator=generator)
    copies = train[:50] + 0.01 * torch.randn(50, 16, generator=generator)
    copied = metrics.memorisation(copies, train, held_out)
    assert copied["samples_copy_fraction"] == 1.0
    assert copied["held_out_copy_fraction"] < 0.05
    assert copied["median_d1_ratio"] < 0.05
    fresh = metrics.memorisation(
        torch.randn(50, 16, generator=generator), train, held_out
    )
    assert fresh["samples_copy_fraction"] < 0.1 and 0.7 < fresh["median_d1_ratio"] < 1.4


def test_inception_features_offline_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_COURSE_PROFILE", "quick")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="quick. profile never downloads"):
        metrics.inception_features(torch.zeros(2, 1, 28, 28))


def test_training_seconds_add_up_over_resumed_invocations(tmp_path):
    from ddpm_course.experiments.fashion_eval import training_seconds

    log = tmp_path / "log.jsonl"
    rows = [(50, 10.0), (100, 20.0), (150, 4.0), (200, 9.0)]  # resumed after step 100
    log.write_text("".join(f'{{"step": {s}, "time": {t}}}\n' for s, t in rows))
    assert training_seconds(log) == {50: 10.0, 100: 20.0, 150: 24.0, 200: 29.0}
