"""Colored-MNIST data: reading MNIST, building and caching the biased dataset, batching.

Everything the trainer sees passes through here. MNIST comes from a local copy of
the four IDX files (or a Keras-style mnist.npz), or is downloaded once. From it we
build Colored-MNIST in the authors' file format (one pickled dict per colour
variance, see colored_mnist_path), cache it, and serve splits with their bias
labels (the 14x14 quantised colour targets of the bias heads) as numpy batches.

Images stay uint8 all the way to the graph, which normalises with MEAN and STD.
"""

import contextlib
import gzip
import hashlib
import math
import http.client
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from urllib.request import urlopen

import numpy as np
from tqdm import tqdm

# Class colours (0..255 RGB), estimated from the authors' published train examples.
PALETTE = np.array([
    [213, 26, 43],    # 0 crimson
    [18, 138, 111],   # 1 teal
    [222, 227, 45],   # 2 yellow
    [31, 91, 215],    # 3 blue
    [228, 106, 40],   # 4 orange
    [141, 24, 195],   # 5 purple
    [82, 203, 212],   # 6 cyan
    [208, 161, 190],  # 7 pink
    [152, 224, 96],   # 8 light green
    [113, 35, 42],    # 9 maroon
], dtype=np.uint8)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
IGNORE_LABEL = -1
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 weights of R, G, B
NUM_CLASSES = 10
NUM_BIAS_BINS = 8

# File stems of the four MNIST files, each stored gzipped (.gz) or raw.
MNIST_FILES = {
    "train_image": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_image": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}
MNIST_NPZ = "mnist.npz"
# MD5 of each file's uncompressed content, keyed by file stem.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_DIR_ENV = "LNTL_MNIST_DIR"
DEFAULT_MNIST_DIR = os.path.join(".", "data", "mnist")
DOWNLOAD_TIMEOUT_S = 15
DOWNLOAD_CHUNK_BYTES = 1 << 16

IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803
GZIP_MAGIC = b"\x1f\x8b"

COLORED_KEYS = ("train_image", "train_label", "test_image", "test_label", "test_gray")
IMAGE_SHAPE = (28, 28)
# Per-pixel float work runs on slices of this many images: small temporaries are faster.
CHUNK_IMAGES = 4096
# Bias label of each channel value: its bin (value // 32), or IGNORE_LABEL for 0.
_BIAS_BIN_OF_VALUE = np.array(
    [IGNORE_LABEL] + [value // (256 // NUM_BIAS_BINS) for value in range(1, 256)], np.int8)
# Seeds the stream of colours for 'test_biased', kept apart from the build's stream.
TEST_BIASED_STREAM = 1


class DataError(ValueError):
    """A data file is missing, unreadable or not what it should be."""


# ---------------------------------------------------------------------------
# Reading MNIST


def read_idx(path):
    """Reads an IDX file (raw or gzip) of uint8 labels (1-D) or images (3-D)."""
    content = _read_maybe_gzip(path)
    if len(content) < 4:
        raise DataError(f"{path}: expected an IDX header, found only {len(content)} bytes")

    magic, = struct.unpack(">I", content[:4])
    expected_ndim = {IDX_LABELS_MAGIC: 1, IDX_IMAGES_MAGIC: 3}.get(magic)
    if expected_ndim is None:
        raise DataError(f"{path}: expected IDX magic 0x{IDX_LABELS_MAGIC:08x} (labels) or "
                        f"0x{IDX_IMAGES_MAGIC:08x} (images), found 0x{magic:08x}")

    header_bytes = 4 + 4 * expected_ndim
    if len(content) < header_bytes:
        raise DataError(f"{path}: expected a {header_bytes}-byte IDX header, "
                        f"found {len(content)} bytes (truncated)")
    shape = struct.unpack(f">{expected_ndim}I", content[4:header_bytes])

    expected_payload = math.prod(shape)  # Python integers: no overflow on absurd headers
    payload = len(content) - header_bytes
    if payload != expected_payload:
        problem = "truncated" if payload < expected_payload else "trailing bytes"
        raise DataError(f"{path}: expected {expected_payload} payload bytes for shape {shape}, "
                        f"found {payload} ({problem})")
    return np.frombuffer(content, np.uint8, offset=header_bytes).reshape(shape).copy()


def _read_maybe_gzip(path):
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as error:
        raise DataError(f"{path}: cannot read file ({error.strerror or error})") from error
    if not content.startswith(GZIP_MAGIC):
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: expected valid gzip data, found a corrupt or truncated "
                        f"gzip stream ({error})") from error


def read_mnist_npz(path):
    """Reads a Keras-style mnist.npz into the same dict that load_mnist returns."""
    keras_keys = {"train_image": "x_train", "train_label": "y_train",
                  "test_image": "x_test", "test_label": "y_test"}
    arrays = _read_npz_arrays(path)
    missing = [key for key in keras_keys.values() if key not in arrays]
    if missing:
        raise DataError(f"{path}: expected arrays x_train, y_train, x_test, y_test, "
                        f"missing {missing}")
    mnist = {ours: arrays[theirs] for ours, theirs in keras_keys.items()}
    sources = {ours: f"{path}[{theirs}]" for ours, theirs in keras_keys.items()}
    return _checked_mnist(mnist, sources)


def _read_npz_arrays(path):
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: expected an npz archive, cannot read it ({error})") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an npz archive, found a single array")
    with loaded:
        try:
            return {name: loaded[name] for name in loaded.files}
        except (OSError, ValueError, zlib.error, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: expected an npz archive, found a corrupt one "
                            f"({error})") from error


def load_mnist(mnist_dir):
    """Loads MNIST from a folder with the four IDX files (gz or raw) or mnist.npz."""
    paths = _mnist_file_paths(mnist_dir)
    if paths is not None:
        mnist = {key: read_idx(path) for key, path in paths.items()}
        return _checked_mnist(mnist, paths)

    npz_path = os.path.join(mnist_dir, MNIST_NPZ)
    if os.path.isfile(npz_path):
        return read_mnist_npz(npz_path)
    raise DataError(_missing_mnist_message(mnist_dir))


def _mnist_file_paths(mnist_dir):
    """Maps each MNIST key to its file in mnist_dir (gz preferred), or None if any is missing."""
    paths = {}
    for key, stem in MNIST_FILES.items():
        candidates = [os.path.join(mnist_dir, stem + ".gz"), os.path.join(mnist_dir, stem)]
        found = [path for path in candidates if os.path.isfile(path)]
        if not found:
            return None
        paths[key] = found[0]
    return paths


def _has_mnist(folder):
    return (_mnist_file_paths(folder) is not None
            or os.path.isfile(os.path.join(folder, MNIST_NPZ)))


def _checked_mnist(mnist, sources):
    """Checks shapes, dtypes, label range and image/label counts; labels become int64."""
    for split in ("train", "test"):
        image_key, label_key = f"{split}_image", f"{split}_label"
        images, labels = mnist[image_key], mnist[label_key]
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
            raise DataError(f"{sources[image_key]}: expected uint8 images of shape (N, 28, 28), "
                            f"found {images.dtype} {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{sources[label_key]}: expected integer labels of shape (N,), "
                            f"found {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{sources[image_key]} holds {len(images)} images but "
                            f"{sources[label_key]} holds {len(labels)} labels; "
                            f"expected equal counts")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(f"{sources[label_key]}: expected labels in 0..9, "
                            f"found {labels.min()}..{labels.max()}")
        mnist[label_key] = labels.astype(np.int64)
    return mnist


# ---------------------------------------------------------------------------
# Finding and downloading MNIST


def find_mnist_dir(mnist_dir=None, download=True):
    """Returns the MNIST folder: the argument, else $LNTL_MNIST_DIR, else ./data/mnist.

    Only the default folder is filled by downloading; a folder named explicitly must
    already hold the files, so a typo is reported instead of silently downloading.
    """
    named = mnist_dir or os.environ.get(MNIST_DIR_ENV)
    if named:
        if not _has_mnist(named):
            raise DataError(_missing_mnist_message(named))
        return os.path.abspath(named)

    if _has_mnist(DEFAULT_MNIST_DIR):
        return os.path.abspath(DEFAULT_MNIST_DIR)
    if not download:
        raise DataError(_missing_mnist_message(DEFAULT_MNIST_DIR))
    try:
        download_mnist(DEFAULT_MNIST_DIR)
    except DataError as error:
        raise DataError(f"{_missing_mnist_message(DEFAULT_MNIST_DIR)} "
                        f"Download failed: {error}") from error
    return os.path.abspath(DEFAULT_MNIST_DIR)


def _missing_mnist_message(folder):
    names = [stem + ".gz" for stem in MNIST_FILES.values()]
    missing = [name for name, stem in zip(names, MNIST_FILES.values())
               if not any(os.path.isfile(os.path.join(folder, candidate))
                          for candidate in (stem + ".gz", stem))]
    found = "none" if len(missing) == len(names) else f"no {', '.join(missing)}"
    return (f"{os.path.abspath(folder)}: expected MNIST files {', '.join(names)} (gzipped "
            f"or not) or {MNIST_NPZ}, found {found}. Put them there, or point --mnist_dir "
            f"or ${MNIST_DIR_ENV} at a folder that has them.")


def download_mnist(dest_dir):
    """Downloads the four MNIST files into dest_dir, checking each one's MD5."""
    os.makedirs(dest_dir, exist_ok=True)
    for stem in MNIST_FILES.values():
        target = os.path.join(dest_dir, stem + ".gz")
        if not os.path.isfile(target):
            _download_verified(stem, target)


class _ChecksumMismatch(Exception):
    """A downloaded file's content is not the one expected."""


def _download_verified(stem, target):
    """Tries each mirror in turn; only a file whose content has the right MD5 is kept."""
    failures = []
    for mirror in MNIST_MIRRORS:
        url = mirror + stem + ".gz"
        try:
            with atomic_file(target) as temp_file:
                _fetch(url, temp_file)
                temp_file.flush()
                found_md5 = _uncompressed_md5(temp_file.name)
                if found_md5 != MNIST_MD5[stem]:
                    raise _ChecksumMismatch(f"expected MD5 {MNIST_MD5[stem]}, found {found_md5}")
            return
        except (OSError, http.client.HTTPException, _ChecksumMismatch) as error:
            failures.append(f"{url}: {error}")
        print(f"Download failed: {failures[-1]}")
    raise DataError(f'{target}: could not download from any mirror ({"; ".join(failures)})')


def _fetch(url, out_file):
    with urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        size = response.headers.get("Content-Length")
        with tqdm(total=int(size) if size else None, unit="B", unit_scale=True,
                  desc=url.rsplit("/", 1)[-1]) as progress:
            for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK_BYTES), b""):
                out_file.write(chunk)
                progress.update(len(chunk))


def _uncompressed_md5(path):
    """MD5 of a gzip file's content, or a description of why it cannot be read."""
    digest = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as error:
        return f"unreadable gzip ({error})"
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Building Colored-MNIST


def sample_colors(color_classes, color_var, rng):
    """One colour per image (0..1 RGB), normal around its class's palette colour."""
    means = PALETTE[np.asarray(color_classes)].astype(np.float32) / 255
    noise = rng.standard_normal(means.shape, dtype=np.float32) * np.float32(np.sqrt(color_var))
    return np.clip(means + noise, 0, 1)


def paint(gray, colors):
    """Paints grey digits (N, 28, 28) with one colour each: pixel = intensity x colour."""
    colors = np.asarray(colors, dtype=np.float32)
    painted = np.empty(gray.shape + (3,), dtype=np.uint8)
    for start in range(0, len(gray), CHUNK_IMAGES):
        stop = start + CHUNK_IMAGES
        # intensity / 255 x colour x 255 is just intensity x colour.
        pixels = gray[start:stop, :, :, None] * colors[start:stop, None, None, :]
        painted[start:stop] = np.rint(pixels, out=pixels)
    return painted


def build_colored_mnist(mnist, color_var, seed):
    """Builds the authors' dict: train coloured by label, test coloured at random."""
    rng = np.random.default_rng(seed)
    train_colors = sample_colors(mnist["train_label"], color_var, rng)
    random_classes = rng.integers(0, NUM_CLASSES, size=len(mnist["test_label"]))
    test_colors = sample_colors(random_classes, color_var, rng)
    return {
        "train_image": paint(mnist["train_image"], train_colors),
        "train_label": mnist["train_label"].astype(np.int64),
        "test_image": paint(mnist["test_image"], test_colors),
        "test_label": mnist["test_label"].astype(np.int64),
        "test_gray": np.repeat(mnist["test_image"][..., None], 3, axis=3),
    }


def colored_mnist_path(data_dir, color_var, seed=0):
    """The authors' file name for seed 0; other seeds get their own file."""
    suffix = f"_seed{seed}" if seed else ""
    return os.path.join(data_dir, f"mnist_10color_jitter_var_{color_var:.3f}{suffix}.npy")


@contextlib.contextmanager
def atomic_file(path):
    """A binary file that becomes `path` only when the block ends without an error.

    It is written beside `path` and renamed over it, so a crash never leaves half a
    file; it gets the mode any new file would (mkstemp alone makes it private).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    os.close(handle)
    try:
        with open(temp_path, "wb") as temp_file:
            yield temp_file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def save_colored_mnist(path, data):
    """np.save of the dict, written atomically."""
    with atomic_file(path) as out_file:
        np.save(out_file, data, allow_pickle=True)


def load_colored_mnist(path):
    """Loads and validates a file in the authors' format (also one written by Python 2)."""
    data = _load_pickled_dict(path)
    missing = [key for key in COLORED_KEYS if key not in data]
    if missing:
        raise DataError(f"{path}: expected keys {list(COLORED_KEYS)}, missing {missing}")

    colored = {
        "train_image": _checked_images(path, "train_image", data["train_image"]),
        "train_label": _checked_labels(path, "train_label", data["train_label"]),
        "test_image": _checked_images(path, "test_image", data["test_image"]),
        "test_label": _checked_labels(path, "test_label", data["test_label"]),
        "test_gray": _checked_images(path, "test_gray", _as_rgb(data["test_gray"])),
    }
    _check_counts(path, colored, ("train_image", "train_label"))
    _check_counts(path, colored, ("test_image", "test_label", "test_gray"))
    for key in ("train_image", "test_image"):
        if len(colored[key]) == 0:
            raise DataError(f"{path}: expected at least one image in {key}, found none")
    return colored


def _load_pickled_dict(path):
    try:
        loaded = np.load(path, encoding="latin1", allow_pickle=True)
    except Exception as error:  # unpickling a foreign file can raise almost anything
        raise DataError(f"{path}: expected an np.save of a pickled dict, cannot load it "
                        f"({type(error).__name__}: {error})") from error
    if isinstance(loaded, np.lib.npyio.NpzFile):
        loaded.close()
        raise DataError(f"{path}: expected an np.save of a pickled dict, found an npz archive")
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        loaded = loaded.item()
    if not isinstance(loaded, dict):
        found = (f"a plain {loaded.dtype} array {loaded.shape}" if isinstance(loaded, np.ndarray)
                 else f"a pickled {type(loaded).__name__}")
        raise DataError(f"{path}: expected an np.save of a pickled dict, found {found}")
    return loaded


def _as_rgb(gray):
    """Accepts grey images as (N, 28, 28), (N, 28, 28, 1) or (N, 28, 28, 3)."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray[..., None]
    if gray.ndim == 4 and gray.shape[3] == 1:
        gray = np.repeat(gray, 3, axis=3)
    return gray


def _check_numeric(path, key, array):
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: expected {key} to be numeric, found dtype {array.dtype}")


def _checked_images(path, key, images):
    """Checks shape and 0..255 range; float pixel values are rounded to uint8."""
    images = np.asarray(images)
    _check_numeric(path, key, images)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE + (3,):
        raise DataError(f"{path}: expected {key} of shape (N, 28, 28, 3), found {images.shape}")
    if images.size == 0:
        return images.astype(np.uint8)

    lowest, highest = images.min(), images.max()
    if not (0 <= lowest and highest <= 255):  # also catches NaN
        raise DataError(f"{path}: expected {key} in 0..255, found {lowest}..{highest}")
    if highest <= 1.0:
        raise DataError(f"{path}: {key} max is {highest}: looks like 0..1 floats, "
                        f"expected 0..255 pixel values")
    if np.issubdtype(images.dtype, np.floating):
        images = np.rint(images)
    return images.astype(np.uint8, copy=False)


def _checked_labels(path, key, labels):
    labels = np.asarray(labels)
    _check_numeric(path, key, labels)
    if labels.ndim != 1:
        raise DataError(f"{path}: expected {key} of shape (N,), found {labels.shape}")
    # The range test comes first: it fails on NaN, which could not be cast to int.
    if labels.size and not (0 <= labels.min() and labels.max() < NUM_CLASSES
                            and np.all(labels == np.round(labels))):
        raise DataError(f"{path}: expected {key} to be integers in 0..9, "
                        f"found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _check_counts(path, data, keys):
    counts = {key: len(data[key]) for key in keys}
    if len(set(counts.values())) > 1:
        raise DataError(f'{path}: expected equal counts for {", ".join(keys)}, found {counts}')


def get_colored_mnist(color_var, data_dir="./data", mnist_dir=None, seed=0):
    """The cached Colored-MNIST dict for color_var, built from MNIST on first use.

    A file already there is used as it is: the authors' own files load this way.
    """
    path = colored_mnist_path(data_dir, color_var, seed)
    if os.path.exists(path):
        return load_colored_mnist(path)

    mnist = load_mnist(find_mnist_dir(mnist_dir))
    print(f"Building Colored-MNIST, variance {color_var:.3f}, seed {seed} -> {path}")
    data = build_colored_mnist(mnist, color_var, seed)
    save_colored_mnist(path, data)
    return data


# ---------------------------------------------------------------------------
# Bias labels and grey copies


def compute_bias_labels(images):
    """Colour targets (N, 14, 14, 3) int8: bin value // 32 at pixel (2i+1, 2j+1).

    Channels that are 0 there (background) get IGNORE_LABEL.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE + (3,):
        raise ValueError(f"expected uint8 images (N, 28, 28, 3), found {images.dtype} "
                         f"{images.shape}")
    return _BIAS_BIN_OF_VALUE[images[:, 1::2, 1::2, :]]


def grayscale(images):
    """Grey copies (N, 28, 28, 3) of colour images: each pixel's luma in all channels.

    Luma is ITU-R 601-2 (0.299 R + 0.587 G + 0.114 B), what PIL's convert("L") and
    torchvision's Grayscale compute. It keeps the colour's brightness, so a yellow
    digit stays brighter than a maroon one and some of the bias survives: this is the
    paper's Gray baseline, not a colour-free upper bound (test_gray is that).
    """
    gray = np.empty_like(images)
    for start in range(0, len(images), CHUNK_IMAGES):
        chunk = images[start:start + CHUNK_IMAGES].astype(np.float32)
        luma = chunk @ np.array(LUMA, np.float32)
        gray[start:start + CHUNK_IMAGES] = np.rint(luma)[..., None]
    return gray


def _brightest_channel(images):
    # Three elementwise maxima are about ten times faster than max over a length-3 axis.
    return np.maximum(np.maximum(images[..., 0], images[..., 1]), images[..., 2])


# ---------------------------------------------------------------------------
# Splits and batches


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images (N, 28, 28, 3), int32 labels, int8 bias labels (N, 14, 14, 3)."""
    images: np.ndarray
    labels: np.ndarray
    bias_labels: np.ndarray

    def __len__(self):
        return len(self.labels)


def _make_split(images, labels):
    return Split(images, labels.astype(np.int32), compute_bias_labels(images))


def load_splits(color_var, data_dir="./data", mnist_dir=None, seed=0, gray=False,
                max_train=None, max_test=None):
    """Train, unbiased test, biased test (own-class colours) and grey test splits.

    With gray=True (the Gray baseline) 'train', 'test' and 'test_biased' are grey copies.
    max_train / max_test keep only the first that many samples.
    """
    for name, cap in (("max_train", max_train), ("max_test", max_test)):
        if cap is not None and cap <= 0:
            raise ValueError(f"{name} must be positive or None, got {cap}")
    data = get_colored_mnist(color_var, data_dir, mnist_dir, seed)
    train_image, train_label = data["train_image"][:max_train], data["train_label"][:max_train]
    test_image, test_label = data["test_image"][:max_test], data["test_label"][:max_test]
    test_gray = data["test_gray"][:max_test]

    rng = np.random.default_rng([seed, TEST_BIASED_STREAM])
    own_colors = sample_colors(test_label, color_var, rng)
    test_biased = paint(_brightest_channel(test_gray), own_colors)
    if gray:  # the Gray baseline sees grey images only, in training and in every test
        train_image, test_image = grayscale(train_image), grayscale(test_image)
        test_biased = grayscale(test_biased)
    return {
        "train": _make_split(train_image, train_label),
        "test": _make_split(test_image, test_label),
        "test_biased": _make_split(test_biased, test_label),
        "test_gray": _make_split(test_gray, test_label),
    }


def num_batches(num_samples, batch_size, drop_remainder):
    if drop_remainder:
        return num_samples // batch_size
    return -(-num_samples // batch_size)


def iterate_batches(split, batch_size, shuffle=False, seed=0, epoch=0, drop_remainder=False,
                    skip_batches=0):
    """Yields (images, labels, bias_labels) batches of one epoch.

    The shuffled order depends only on (seed, epoch), so a run resumed at batch k with
    skip_batches=k sees exactly the batches an uninterrupted run would have.
    """
    if batch_size <= 0 or skip_batches < 0:
        raise ValueError(f"need batch_size > 0 and skip_batches >= 0, "
                         f"got {batch_size} and {skip_batches}")
    count = num_batches(len(split), batch_size, drop_remainder)
    order = np.random.default_rng([seed, epoch]).permutation(len(split)) if shuffle else None
    return _batches(split, batch_size, order, count, skip_batches)


def _batches(split, batch_size, order, count, skip_batches):
    for batch in range(skip_batches, count):
        index = slice(batch * batch_size, (batch + 1) * batch_size)
        if order is not None:
            index = order[index]
        yield split.images[index], split.labels[index], split.bias_labels[index]
