"""Tests for data_loader: MNIST reading, Colored-MNIST building and format, bias labels, batches.

Run from the repository root: python -m pytest tests/test_data_loader.py -q
The real-MNIST tests use the local copy (see conftest.py); nothing here needs a network.
"""

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest

import data_loader
from data_loader import DataError

COLOR_VAR = 0.020
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def error_message(function, *args, **kwargs):
    """Calls function, expecting a DataError, and returns its one-line message."""
    with pytest.raises(DataError) as caught:
        function(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# IDX files


def idx_bytes(array, magic=None):
    magic = magic or {1: 0x00000801, 3: 0x00000803}[array.ndim]
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return struct.pack(">I", magic) + dims + array.astype(np.uint8).tobytes()


def write_file(path, content, compress=False):
    with open(path, "wb") as f:
        f.write(gzip.compress(content) if compress else content)
    return str(path)


@pytest.mark.parametrize("name, compress", [
    ("data.idx", False),
    ("data.idx.gz", True),
    ("gzipped_without_suffix", True),  # gzip is told by its magic bytes, not the name
])
def test_read_idx_round_trip(tmp_path, name, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9, 3, 3], dtype=np.uint8)
    for kind, array in (("images", images), ("labels", labels)):
        path = write_file(tmp_path / f"{kind}_{name}", idx_bytes(array), compress)
        read = data_loader.read_idx(path)
        assert read.dtype == np.uint8
        np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("content, expected", [
    (idx_bytes(np.zeros((2, 3, 4)), magic=0x00000802), ["magic 0x00000801", "found 0x00000802"]),
    (idx_bytes(np.zeros((2, 3, 4)))[:-1], ["expected 24 payload bytes", "found 23 (truncated)"]),
    (idx_bytes(np.zeros(5)) + b"\0\0", ["expected 5 payload bytes", "found 7 (trailing bytes)"]),
    (idx_bytes(np.zeros((2, 3, 4)))[:10], ["16-byte IDX header", "truncated"]),
])
def test_read_idx_rejects_corrupt_files(tmp_path, content, expected):
    path = write_file(tmp_path / "bad-idx-ubyte", content)
    message = error_message(data_loader.read_idx, path)
    assert path in message
    for text in expected:
        assert text in message


def test_read_idx_rejects_truncated_and_corrupt_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    truncated = write_file(tmp_path / "truncated.gz", compressed[:len(compressed) // 2])
    message = error_message(data_loader.read_idx, truncated)
    assert truncated in message and "corrupt or truncated gzip" in message

    # The last 8 bytes of a gzip stream are the CRC and size of its content.
    bad_crc = compressed[:-8] + bytes([compressed[-8] ^ 0xFF]) + compressed[-7:]
    corrupt = write_file(tmp_path / "bad_crc.gz", bad_crc)
    message = error_message(data_loader.read_idx, corrupt)
    assert corrupt in message and "CRC" in message


def write_tiny_mnist(folder, num_train=5, num_train_labels=5, compress=True):
    """Writes the four MNIST files with a few random images; returns the folder."""
    rng = np.random.default_rng(0)
    counts = {"train_image": num_train, "train_label": num_train_labels,
              "test_image": 3, "test_label": 3}
    for key, stem in data_loader.MNIST_FILES.items():
        shape = (counts[key], 28, 28) if key.endswith("image") else (counts[key],)
        array = rng.integers(0, 10 if key.endswith("label") else 256, shape)
        write_file(os.path.join(folder, stem + (".gz" if compress else "")),
                   idx_bytes(array), compress)
    return str(folder)


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_reads_gz_or_raw_names(tmp_path, compress):
    mnist = data_loader.load_mnist(write_tiny_mnist(tmp_path, compress=compress))
    assert mnist["train_image"].shape == (5, 28, 28) and mnist["train_image"].dtype == np.uint8
    assert mnist["test_label"].shape == (3,) and mnist["test_label"].dtype == np.int64


def test_load_mnist_rejects_count_mismatch(tmp_path):
    folder = write_tiny_mnist(tmp_path, num_train=5, num_train_labels=4)
    message = error_message(data_loader.load_mnist, folder)
    assert os.path.join(folder, "train-images-idx3-ubyte.gz") in message
    assert os.path.join(folder, "train-labels-idx1-ubyte.gz") in message
    assert "holds 5 images" in message and "holds 4 labels" in message


def test_load_mnist_reads_keras_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "y_train": np.array([0, 9, 4, 4]),
              "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "y_test": np.array([1, 2])}
    np.savez(tmp_path / "mnist.npz", **arrays)
    mnist = data_loader.load_mnist(str(tmp_path))
    np.testing.assert_array_equal(mnist["train_image"], arrays["x_train"])
    np.testing.assert_array_equal(mnist["test_label"], arrays["y_test"])
    assert mnist["train_label"].dtype == np.int64


# ---------------------------------------------------------------------------
# Real MNIST


def test_real_mnist_counts_histogram_and_pixel_statistics(mnist):
    assert mnist["train_image"].shape == (60000, 28, 28)
    assert mnist["test_image"].shape == (10000, 28, 28)
    assert np.bincount(mnist["train_label"]).tolist() == TRAIN_LABEL_COUNTS
    assert np.bincount(mnist["test_label"]).tolist() == TEST_LABEL_COUNTS
    # Mean and standard deviation from the histogram of grey values, on a 0..1 scale.
    frequency, _ = np.histogram(mnist["train_image"], bins=256, range=(0, 256))
    value = np.arange(256) / 255
    mean = (frequency * value).sum() / frequency.sum()
    std = math.sqrt((frequency * (value - mean) ** 2).sum() / frequency.sum())
    assert round(mean, 4) == 0.1307 and round(std, 4) == 0.3081


def test_real_mnist_md5_of_uncompressed_content(mnist_dir):
    for stem, expected in data_loader.MNIST_MD5.items():
        with gzip.open(os.path.join(mnist_dir, stem + ".gz"), "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == expected, stem


# ---------------------------------------------------------------------------
# Bias labels


def test_bias_labels_of_hand_made_image():
    image = np.zeros((1, 28, 28, 3), dtype=np.uint8)
    expected = np.full((1, 14, 14, 3), data_loader.IGNORE_LABEL, dtype=np.int8)
    # Sampled pixels (odd row, odd column): channel value 0 stays ignored,
    # 31 and 32 sit either side of the first bin edge, 255 is the top bin.
    image[0, 1, 1] = (0, 31, 32)
    expected[0, 0, 0] = (-1, 0, 1)
    image[0, 3, 5] = (255, 224, 223)
    expected[0, 1, 2] = (7, 7, 6)
    image[0, 27, 27] = (64, 100, 1)
    expected[0, 13, 13] = (2, 3, 0)
    # Bright pixels at even rows or columns must not be sampled.
    image[0, 0, 0] = image[0, 2, 4] = image[0, 2, 5] = image[0, 3, 4] = (200, 150, 100)
    image[0, 26, 26] = (90, 90, 90)

    bias_labels = data_loader.compute_bias_labels(image)
    assert bias_labels.dtype == np.int8
    np.testing.assert_array_equal(bias_labels, expected)


# ---------------------------------------------------------------------------
# Colored-MNIST built from real MNIST


@pytest.fixture(scope="module")
def colored(mnist):
    return data_loader.build_colored_mnist(mnist, COLOR_VAR, seed=0)


def small_mnist(mnist):
    """The first 200 training and 100 test digits, for tests that need few images."""
    small = {key: mnist[key][:200] for key in ("train_image", "train_label")}
    small.update({key: mnist[key][:100] for key in ("test_image", "test_label")})
    return small


@pytest.fixture(scope="module")
def small_colored(mnist):
    return data_loader.build_colored_mnist(small_mnist(mnist), COLOR_VAR, seed=0)


def recovered_colors(images, gray):
    """Each image's colour (0..255) read at its brightest grey pixel: pixel = grey x colour."""
    rows = np.arange(len(images))
    brightest = gray.reshape(len(gray), -1).argmax(axis=1)
    intensity = gray.reshape(len(gray), -1)[rows, brightest].astype(np.float64)
    return images.reshape(len(images), -1, 3)[rows, brightest] / intensity[:, None] * 255


def nearest_palette_class(colors):
    distances = np.linalg.norm(colors[:, None, :] - data_loader.PALETTE[None], axis=2)
    return distances.argmin(axis=1)


def test_colored_mnist_format(colored, mnist):
    assert set(colored) == set(data_loader.COLORED_KEYS)
    assert colored["train_image"].shape == (60000, 28, 28, 3)
    assert colored["test_image"].shape == (10000, 28, 28, 3)
    for key in ("train_image", "test_image", "test_gray"):
        assert colored[key].dtype == np.uint8, key
    np.testing.assert_array_equal(colored["train_label"], mnist["train_label"])
    np.testing.assert_array_equal(colored["test_gray"],
                                  np.repeat(mnist["test_image"][..., None], 3, axis=3))
    # pixel = intensity x colour with colour <= 1: never brighter than the grey digit,
    # and the background stays black.
    assert np.all(colored["train_image"] <= mnist["train_image"][..., None])
    assert np.all(colored["test_image"] <= mnist["test_image"][..., None])


def test_train_colour_follows_the_label(colored, mnist):
    colors = recovered_colors(colored["train_image"], mnist["train_image"])
    share = np.mean(nearest_palette_class(colors) == mnist["train_label"])
    # Chance is 0.1. At variance 0.020 (std 36 levels) some palette colours are only
    # 80 to 100 levels apart, so about one image in eight lands nearer a neighbour.
    assert share > 0.8


def test_test_colour_is_independent_of_the_label(colored, mnist):
    colors = recovered_colors(colored["test_image"], mnist["test_image"])
    share = np.mean(nearest_palette_class(colors) == mnist["test_label"])
    assert 0.07 < share < 0.13


def clipped_normal_mean(mean, std):
    """E[clip(X, 0, 1)] for X ~ N(mean, std^2), elementwise."""
    erf = np.vectorize(math.erf)

    def cdf(z):
        return 0.5 * (1 + erf(z / math.sqrt(2)))

    def pdf(z):
        return np.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    low, high = -mean / std, (1 - mean) / std
    return (mean * (cdf(high) - cdf(low)) + std * (pdf(low) - pdf(high))
            + (1 - cdf(high)))


def test_class_mean_colour_matches_palette(colored, mnist):
    colors = recovered_colors(colored["train_image"], mnist["train_image"])
    labels = mnist["train_label"]
    class_means = np.stack([colors[labels == k].mean(axis=0) for k in range(10)])
    std = math.sqrt(COLOR_VAR)
    expected = clipped_normal_mean(data_loader.PALETTE / 255, std) * 255

    # Clipping at 0 and 1 moves the mean of dark or bright channels by up to ~7 levels,
    # so we compare with the clipped normal's mean. Tolerance: 5 standard errors of a
    # class mean (std * 255 / sqrt(n), an upper bound since clipping only narrows the
    # spread), plus 0.5 level for reading the colour off a rounded uint8 pixel.
    counts = np.bincount(labels)[:, None]
    tolerance = 5 * std * 255 / np.sqrt(counts) + 0.5
    assert np.all(np.abs(class_means - expected) <= tolerance)
    # Ignoring the clipping would fail: the check is tight enough to see it.
    assert np.abs(expected - data_loader.PALETTE).max() > tolerance.max()


def test_same_seed_same_bytes_other_seed_other_colours(small_colored, mnist):
    small = small_mnist(mnist)
    again = data_loader.build_colored_mnist(small, COLOR_VAR, seed=0)
    for key in data_loader.COLORED_KEYS:
        assert again[key].tobytes() == small_colored[key].tobytes(), key

    other = data_loader.build_colored_mnist(small, COLOR_VAR, seed=1)
    first = recovered_colors(small_colored["train_image"], small["train_image"])
    second = recovered_colors(other["train_image"], small["train_image"])
    assert np.abs(first - second).mean() > 10


def test_grayscale_is_luma_in_all_three_channels():
    images = np.zeros((2, 28, 28, 3), dtype=np.uint8)
    images[0, 0, 0] = (255, 0, 0)      # 0.299 x 255 = 76.2
    images[0, 0, 1] = (0, 255, 0)      # 0.587 x 255 = 149.7
    images[0, 0, 2] = (0, 0, 255)      # 0.114 x 255 = 29.1
    images[1, 5, 5] = (100, 200, 50)   # 29.9 + 117.4 + 5.7 = 153.0
    gray = data_loader.grayscale(images)
    assert gray.shape == images.shape and gray.dtype == np.uint8
    for channel in range(3):
        assert list(gray[0, 0, :3, channel]) == [76, 150, 29]
        assert gray[1, 5, 5, channel] == 153
    assert gray.astype(int).sum() == 3 * (76 + 150 + 29 + 153)  # background stays black


# ---------------------------------------------------------------------------
# The authors' file format


class Python2Pickler(pickle._Pickler):
    """Writes every string as a Python 2 str (SHORT_BINSTRING / BINSTRING), as Python 2 did.

    Array data pickled by Python 2 are such strings; only encoding='latin1' reads them.
    """
    dispatch = dict(pickle._Pickler.dispatch)

    def write_python2_str(self, data):
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def save_bytes(self, obj):
        self.write_python2_str(obj)
        self.memoize(obj)

    def save_text(self, obj):
        self.write_python2_str(obj.encode("latin1"))
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_text


def write_python2_npy(path, data):
    """What Python 2's np.save wrote for a dict: a 1.0 header, then a protocol-2 pickle
    of the dict wrapped in a 0-d object array."""
    stream = io.BytesIO()
    Python2Pickler(stream, protocol=2).dump(np.array(data, dtype=object))
    # Python 2's numpy pickled its arrays as numpy.core.multiarray._reconstruct.
    payload = stream.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert payload.startswith(b"\x80\x02") and b"_codecs" not in payload
    with open(path, "wb") as f:
        header = {"descr": "|O", "fortran_order": False, "shape": ()}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    return str(path)


def assert_same_colored(loaded, original):
    assert set(loaded) == set(data_loader.COLORED_KEYS)
    for key in data_loader.COLORED_KEYS:
        expected_dtype = np.int64 if key.endswith("label") else np.uint8
        assert loaded[key].dtype == expected_dtype, key
        np.testing.assert_array_equal(loaded[key], original[key], err_msg=key)


def test_colored_path_names_the_variance_with_three_decimals():
    path = data_loader.colored_mnist_path("data", 0.02)
    assert path == os.path.join("data", "mnist_10color_jitter_var_0.020.npy")
    other_seed = data_loader.colored_mnist_path("data", 0.045, seed=3)
    assert other_seed == os.path.join("data", "mnist_10color_jitter_var_0.045_seed3.npy")


def test_save_load_round_trip(tmp_path, small_colored):
    path = data_loader.colored_mnist_path(str(tmp_path / "cache"), COLOR_VAR)
    data_loader.save_colored_mnist(path, small_colored)
    assert os.listdir(tmp_path / "cache") == [os.path.basename(path)]  # no temp file left
    assert_same_colored(data_loader.load_colored_mnist(path), small_colored)


def test_python2_protocol2_pickle_loads_the_same(tmp_path, small_colored):
    path = write_python2_npy(tmp_path / "py2.npy", small_colored)
    assert_same_colored(data_loader.load_colored_mnist(path), small_colored)


@pytest.mark.parametrize("gray_shape", [(100, 28, 28), (100, 28, 28, 1)])
def test_load_accepts_float_pixels_and_single_channel_gray(tmp_path, small_colored, gray_shape):
    data = dict(small_colored)
    data["train_image"] = small_colored["train_image"].astype(np.float32)
    data["test_gray"] = small_colored["test_gray"][..., 0].reshape(gray_shape).astype(float)
    path = str(tmp_path / "float.npy")
    np.save(path, data)
    assert_same_colored(data_loader.load_colored_mnist(path), small_colored)


def with_change(data, key, value):
    changed = dict(data)
    if value is None:
        del changed[key]
    else:
        changed[key] = value
    return changed


@pytest.mark.parametrize("make_content, expected", [
    (lambda d: np.zeros((3, 28, 28, 3), np.uint8), "found a plain uint8 array (3, 28, 28, 3)"),
    (lambda d: np.array("text", dtype=object), "found a pickled str"),
    (lambda d: with_change(d, "test_gray", None), "missing ['test_gray']"),
    (lambda d: with_change(d, "test_image", d["test_image"][:, :27]),
     "expected test_image of shape (N, 28, 28, 3), found (100, 27, 28, 3)"),
    (lambda d: with_change(d, "train_label", d["train_label"][:, None]),
     "expected train_label of shape (N,), found (200, 1)"),
    (lambda d: with_change(d, "train_image", d["train_image"] / 255.0),
     "looks like 0..1 floats, expected 0..255 pixel values"),
    (lambda d: with_change(d, "train_image", d["train_image"] * 2.0),
     "expected train_image in 0..255, found 0.0.."),
    (lambda d: with_change(d, "test_label", d["test_label"] + 1),
     "expected test_label to be integers in 0..9, found 1..10"),
    (lambda d: with_change(d, "train_label", d["train_label"][:-1]),
     "expected equal counts for train_image, train_label, "
     "found {'train_image': 200, 'train_label': 199}"),
    (lambda d: with_change(d, "test_label", d["test_label"].astype(str)),
     "expected test_label to be numeric, found dtype <U"),
    (lambda d: with_change(with_change(d, "test_image", d["test_image"][:0]), "test_label",
                           d["test_label"][:0]) | {"test_gray": d["test_gray"][:0]},
     "expected at least one image in test_image, found none"),
])
def test_load_colored_mnist_rejects_bad_content(tmp_path, small_colored, make_content,
                                                 expected):
    path = str(tmp_path / "bad.npy")
    np.save(path, make_content(small_colored), allow_pickle=True)
    message = error_message(data_loader.load_colored_mnist, path)
    assert path in message and expected in message


def test_load_colored_mnist_rejects_a_file_that_is_not_npy(tmp_path):
    path = write_file(tmp_path / "garbage.npy", b"not a numpy file at all")
    message = error_message(data_loader.load_colored_mnist, path)
    assert path in message and "cannot load it" in message


# ---------------------------------------------------------------------------
# The cache and the splits


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, mnist_dir):
    folder = str(tmp_path_factory.mktemp("data"))
    data_loader.get_colored_mnist(COLOR_VAR, data_dir=folder, mnist_dir=mnist_dir)
    return folder


def test_get_colored_mnist_builds_once_then_loads_the_cache(cache_dir, colored, monkeypatch):
    assert os.path.exists(data_loader.colored_mnist_path(cache_dir, COLOR_VAR))

    def must_not_build(*args, **kwargs):
        raise AssertionError("the cached file should have been used")
    monkeypatch.setattr(data_loader, "build_colored_mnist", must_not_build)
    cached = data_loader.get_colored_mnist(COLOR_VAR, data_dir=cache_dir)
    assert_same_colored(cached, colored)


def check_split(split, num_samples):
    assert len(split) == num_samples
    assert split.images.shape == (num_samples, 28, 28, 3) and split.images.dtype == np.uint8
    assert split.labels.shape == (num_samples,) and split.labels.dtype == np.int32
    assert split.bias_labels.dtype == np.int8
    np.testing.assert_array_equal(split.bias_labels,
                                  data_loader.compute_bias_labels(split.images))


def test_load_splits(cache_dir, colored, mnist):
    splits = data_loader.load_splits(COLOR_VAR, data_dir=cache_dir, max_train=600,
                                     max_test=300)
    assert set(splits) == {"train", "test", "test_biased", "test_gray"}
    check_split(splits["train"], 600)
    for name in ("test", "test_biased", "test_gray"):
        check_split(splits[name], 300)
        np.testing.assert_array_equal(splits[name].labels, mnist["test_label"][:300])
    np.testing.assert_array_equal(splits["train"].images, colored["train_image"][:600])
    np.testing.assert_array_equal(splits["test"].images, colored["test_image"][:300])
    np.testing.assert_array_equal(splits["test_gray"].images, colored["test_gray"][:300])

    biased = splits["test_biased"]
    colors = recovered_colors(biased.images, mnist["test_image"][:300])
    assert np.mean(nearest_palette_class(colors) == biased.labels) > 0.8

    again = data_loader.load_splits(COLOR_VAR, data_dir=cache_dir, max_train=1, max_test=300)
    np.testing.assert_array_equal(again["test_biased"].images, biased.images)


def test_load_splits_gray(cache_dir, colored):
    splits = data_loader.load_splits(COLOR_VAR, data_dir=cache_dir, gray=True, max_train=500,
                                     max_test=200)
    train = splits["train"].images
    assert np.array_equal(train[..., 0], train[..., 1]) and np.array_equal(train[..., 0],
                                                                           train[..., 2])
    np.testing.assert_array_equal(train, data_loader.grayscale(colored["train_image"][:500]))
    np.testing.assert_array_equal(splits["test"].images,
                                  data_loader.grayscale(colored["test_image"][:200]))
    np.testing.assert_array_equal(splits["test_gray"].images, colored["test_gray"][:200])
    coloured_biased = data_loader.load_splits(COLOR_VAR, data_dir=cache_dir, max_train=1,
                                              max_test=200)["test_biased"].images
    np.testing.assert_array_equal(splits["test_biased"].images,
                                  data_loader.grayscale(coloured_biased))


@pytest.mark.parametrize("caps", [{"max_train": 0}, {"max_test": -5}])
def test_load_splits_rejects_non_positive_caps(tmp_path, caps):
    with pytest.raises(ValueError, match="must be positive or None"):
        data_loader.load_splits(COLOR_VAR, data_dir=str(tmp_path), **caps)


# ---------------------------------------------------------------------------
# Batches


def numbered_split(num_samples):
    """A split whose image i is filled with the value i, so a batch shows its indices."""
    images = np.broadcast_to(np.arange(num_samples, dtype=np.uint8)[:, None, None, None],
                             (num_samples, 28, 28, 3)).copy()
    return data_loader.Split(images, np.arange(num_samples, dtype=np.int32),
                             data_loader.compute_bias_labels(images))


def batch_indices(batches):
    return [labels.tolist() for _, labels, _ in batches]


def test_batches_shapes_and_remainder():
    split = numbered_split(10)
    batches = list(data_loader.iterate_batches(split, 4))
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 2]
    assert data_loader.num_batches(10, 4, drop_remainder=False) == 3
    images, labels, bias_labels = batches[0]
    assert images.shape == (4, 28, 28, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert bias_labels.shape == (4, 14, 14, 3) and bias_labels.dtype == np.int8
    assert batch_indices(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert np.all(images[:, :, :, 0] == labels[:, None, None])

    dropped = list(data_loader.iterate_batches(split, 4, drop_remainder=True))
    assert [len(labels) for _, labels, _ in dropped] == [4, 4]
    assert data_loader.num_batches(10, 4, drop_remainder=True) == 2
    assert data_loader.num_batches(8, 4, drop_remainder=False) == 2


def test_shuffled_epoch_visits_every_index_once():
    split = numbered_split(50)
    batches = batch_indices(data_loader.iterate_batches(split, 8, shuffle=True, seed=3, epoch=2))
    visited = np.concatenate(batches)
    assert sorted(visited.tolist()) == list(range(50))
    expected = np.random.default_rng([3, 2]).permutation(50)
    np.testing.assert_array_equal(visited, expected)

    dropped = np.concatenate(batch_indices(data_loader.iterate_batches(
        split, 8, shuffle=True, seed=3, epoch=2, drop_remainder=True)))
    assert len(dropped) == 48 and len(set(dropped.tolist())) == 48


def test_shuffle_order_depends_on_seed_and_epoch():
    split = numbered_split(50)

    def order(seed, epoch):
        return batch_indices(data_loader.iterate_batches(split, 10, shuffle=True, seed=seed,
                                                         epoch=epoch))
    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_skip_batches_resumes_where_an_uninterrupted_run_would_be(shuffle):
    split = numbered_split(50)
    kwargs = dict(shuffle=shuffle, seed=5, epoch=4, drop_remainder=True)
    full = batch_indices(data_loader.iterate_batches(split, 8, **kwargs))
    resumed = batch_indices(data_loader.iterate_batches(split, 8, skip_batches=2, **kwargs))
    assert len(full) == 6 and resumed == full[2:]


# ---------------------------------------------------------------------------
# Finding and downloading MNIST


@pytest.fixture
def no_mnist_env(monkeypatch, tmp_path):
    """Runs in an empty folder, with LNTL_MNIST_DIR unset."""
    monkeypatch.delenv(data_loader.MNIST_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_names_four_files(message):
    for stem in data_loader.MNIST_FILES.values():
        assert stem + ".gz" in message


def test_find_mnist_dir_honours_flag_then_env_then_default(no_mnist_env, monkeypatch):
    flag_dir = no_mnist_env / "from_flag"
    flag_dir.mkdir()
    write_tiny_mnist(flag_dir)
    env_dir = no_mnist_env / "from_env"
    env_dir.mkdir()
    np.savez(env_dir / "mnist.npz")  # a folder with mnist.npz counts too
    default_dir = no_mnist_env / "data" / "mnist"
    default_dir.mkdir(parents=True)
    write_tiny_mnist(default_dir, compress=False)

    assert data_loader.find_mnist_dir(download=False) == str(default_dir)
    monkeypatch.setenv(data_loader.MNIST_DIR_ENV, str(env_dir))
    assert data_loader.find_mnist_dir(download=False) == str(env_dir)
    assert data_loader.find_mnist_dir(str(flag_dir), download=False) == str(flag_dir)


def test_find_mnist_dir_rejects_named_folder_without_files(no_mnist_env, monkeypatch):
    empty = no_mnist_env / "empty"
    empty.mkdir()
    message = error_message(data_loader.find_mnist_dir, str(empty))
    assert str(empty) in message
    assert_names_four_files(message)

    monkeypatch.setenv(data_loader.MNIST_DIR_ENV, str(empty))
    assert str(empty) in error_message(data_loader.find_mnist_dir)


def test_find_mnist_dir_names_the_one_missing_file(no_mnist_env):
    partial = no_mnist_env / "partial"
    partial.mkdir()
    write_tiny_mnist(partial)
    os.remove(partial / "t10k-labels-idx1-ubyte.gz")
    message = error_message(data_loader.find_mnist_dir, str(partial))
    assert "found no t10k-labels-idx1-ubyte.gz." in message


def test_read_mnist_npz_rejects_a_broken_zip(tmp_path):
    path = write_file(tmp_path / "mnist.npz", b"PK\x03\x04 then nothing of a zip")
    message = error_message(data_loader.read_mnist_npz, path)
    assert path in message and "expected an npz archive" in message


def test_find_mnist_dir_without_copy_or_download(no_mnist_env):
    message = error_message(data_loader.find_mnist_dir, download=False)
    assert str(no_mnist_env / "data" / "mnist") in message
    assert_names_four_files(message)
    assert "--mnist_dir" in message and "LNTL_MNIST_DIR" in message


class FakeResponse(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def serve(monkeypatch, respond):
    """Replaces urlopen: respond(url) gives the payload bytes or an exception to raise."""
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        answer = respond(url)
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer)
    monkeypatch.setattr(data_loader, "urlopen", fake_urlopen)
    return requested


def test_find_mnist_dir_without_network(no_mnist_env, monkeypatch):
    serve(monkeypatch, lambda url: URLError("no network"))
    message = error_message(data_loader.find_mnist_dir)
    assert str(no_mnist_env / "data" / "mnist") in message
    assert "--mnist_dir" in message and "LNTL_MNIST_DIR" in message
    assert "Download failed" in message and "no network" in message
    assert os.listdir(no_mnist_env / "data" / "mnist") == []


def test_download_rejects_bad_checksums_and_leaves_nothing(tmp_path, monkeypatch):
    requested = serve(monkeypatch, lambda url: gzip.compress(b"not MNIST"))
    message = error_message(data_loader.download_mnist, str(tmp_path))
    assert len(requested) == len(data_loader.MNIST_MIRRORS)
    for url in requested:
        assert url in message
    assert "expected MD5" in message
    assert os.listdir(tmp_path) == []


def test_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch, mnist_dir):
    first_mirror, second_mirror = data_loader.MNIST_MIRRORS

    def respond(url):
        if url.startswith(first_mirror):
            return b"<html>mirror error page</html>"
        with open(os.path.join(mnist_dir, url[len(second_mirror):]), "rb") as f:
            return f.read()
    requested = serve(monkeypatch, respond)

    data_loader.download_mnist(str(tmp_path))
    assert len(requested) == 8
    assert sorted(os.listdir(tmp_path)) == sorted(
        stem + ".gz" for stem in data_loader.MNIST_FILES.values())
    for name in os.listdir(tmp_path):
        with open(tmp_path / name, "rb") as got, open(os.path.join(mnist_dir, name), "rb") as want:
            assert got.read() == want.read(), name
