"""Image datasets in their native formats, held in memory as uint8, with batched augmentation.

``fashion-mnist`` (IDX ``.gz``), ``cifar10`` / ``cifar100`` (python pickles), ``svhn`` (MATLAB ``.mat``), and
``digits``: scikit-learn's 8x8 handwritten digits, read from the installed scikit-learn (see :func:`_read_digits`).
A whole split lives on the device as uint8 ``[N, C, H, W]``, so an epoch is a few index operations:
:func:`batches` slices a random permutation, :func:`augment` crops / flips a whole batch with tensor ops.

Where :func:`locate` looks for a split (each folder as is, or its ``<name>/`` or ``FashionMNIST/raw/``):

* ``root`` given (``--data-root``): there only, downloading what is missing into ``<root>/<name>/``,
  so a run's config.json names the data it really used;
* else ``$SPIKETIDE_DATA``, the system copy (Fashion-MNIST), then the cache
  ``$XDG_CACHE_HOME/spiketide/<name>`` (default ``~/.cache``), downloading what is missing there.

Downloads are the official files, verified against their published MD5 (pooch) before use. Files
already there are never overwritten (an archive's incomplete extracted folder is replaced whole).
``digits`` is never downloaded and ignores ``root``: its one file comes from the installed scikit-learn.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
import torch.nn.functional as F

from spiketide.config import DATASETS, DatasetInfo, dataset_info  # re-exported: the registry lives in config
from spiketide.errors import ConfigError, DataError
from spiketide.evaluation import to_float  # re-exported: callers use data.to_float

__all__ = ["AUGMENT", "DATASETS", "SOURCES", "Augmentation", "DatasetInfo", "ImageSet", "Remote", "augment",
           "balanced_subset_indices", "batches", "dataset_info", "fetch", "load", "locate", "random_crop",
           "random_flip", "to_float", "verify_checksum"]


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: random crop after ``pad`` pixels of zero padding, optional h-flip."""

    pad: int
    flip: bool


AUGMENT: dict[str, Augmentation] = {
    # RandomCrop(32, padding=4) + RandomHorizontalFlip, as in the authors' CIFAR code.
    "cifar10": Augmentation(pad=4, flip=True),
    "cifar100": Augmentation(pad=4, flip=True),
    # Flipping would turn digits into non-digits (2, 3, 4, 5, 7 ...), so translation only.
    "svhn": Augmentation(pad=4, flip=False),
    # Items are centred and all shoes face the same way, so a flip makes off-distribution
    # images; a small (+-2 px) shift is the usual mild choice.
    "fashion-mnist": Augmentation(pad=2, flip=False),
    # 8x8 digits: a 1 px shift is already 1/8 of the image; no flip (as for SVHN).
    "digits": Augmentation(pad=1, flip=False),
}


@dataclass
class ImageSet:
    """A whole split in memory: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.labels.dtype != torch.int64:
            raise ConfigError(f"ImageSet needs uint8 images [N, C, H, W] and int64 labels [N], got "
                              f"{self.images.dtype} images {tuple(self.images.shape)}, {self.labels.dtype} labels")
        if len(self.images) != len(self.labels):
            raise ConfigError(f"ImageSet has {len(self.images)} images but {len(self.labels)} labels; they must match")

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> ImageSet:
        """The set on ``device`` (tensors already there are shared, not copied)."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.name, self.num_classes)


# ----------------------------------------------------------------------------- where files are

ENV_VAR = "SPIKETIDE_DATA"
# Read-only system copies (Fashion-MNIST comes from `apt-get install dataset-fashion-mnist`).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

_C10, _C100 = "cifar-10-batches-py", "cifar-100-python"
# Files (relative to a dataset folder) each split needs.
_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist": {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                      "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")},
    "cifar10": {"train": tuple(f"{_C10}/data_batch_{i}" for i in range(1, 6)), "test": (f"{_C10}/test_batch",)},
    "cifar100": {"train": (f"{_C100}/train",), "test": (f"{_C100}/test",)},
    "svhn": {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
}


@dataclass(frozen=True)
class Remote:
    """One official download (``known_hash`` as in pooch) and the dataset files it ``provides``."""

    fname: str
    url: str
    known_hash: str
    provides: tuple[str, ...]
    extract: bool = False


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KRIZ_URL = "https://www.cs.toronto.edu/~kriz/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SOURCES: dict[str, tuple[Remote, ...]] = {
    "fashion-mnist": tuple(Remote(f, _FMNIST_URL + f, "md5:" + h, (f,)) for f, h in (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))),
    "cifar10": (Remote("cifar-10-python.tar.gz", _KRIZ_URL + "cifar-10-python.tar.gz",
                       "md5:c58f30108f718f92721af3b95e74349a", sum(_FILES["cifar10"].values(), ()), extract=True),),
    "cifar100": (Remote("cifar-100-python.tar.gz", _KRIZ_URL + "cifar-100-python.tar.gz",
                        "md5:eb9058c3a382ffc7106e4002c42a8d85", sum(_FILES["cifar100"].values(), ()), extract=True),),
    "svhn": tuple(Remote(f, _SVHN_URL + f, "md5:" + h, (f,)) for f, h in (
        ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"))),
}


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiketide" / name


def _folders(name: str, root: str | os.PathLike | None) -> tuple[list[Path], Path]:
    """The folders a user filled (used as they are) and the one that downloads go into."""
    raw = ["FashionMNIST/raw"] if name == "fashion-mnist" else []
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--data-root {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                              f"create it or omit --data-root to use the default locations (${ENV_VAR}, the system "
                              f"copy, the cache {_cache_dir(name)})")
        return [root] + [root / r for r in raw], root / name
    env = [Path(os.environ[ENV_VAR]).expanduser()] if os.environ.get(ENV_VAR) else []
    user = [f for base in env for f in (base, base / name, *(base / r for r in raw))]
    return user + list(SYSTEM_DIRS.get(name, ())), _cache_dir(name)


def locate(name: str, split: str = "train", *, root: str | os.PathLike | None = None,
           download: bool = True) -> Path:
    """The folder holding ``split`` of ``name`` (see the module docstring), downloading if allowed."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'test'")
    if info.name == "digits":  # inside scikit-learn: root and download do not apply
        return _digits_folder()
    required = _FILES[info.name][split]
    every = {f for files in _FILES[info.name].values() for f in files}
    user, target = _folders(info.name, root)
    for folder in user:
        if not any((folder / f).is_file() for f in every):
            continue
        missing = [f for f in required if not (folder / f).is_file()]
        if not missing:
            return folder
        # A partial copy is almost always a mistake; silently using another copy would hide it.
        raise DataError(f"missing file {folder / missing[0]}: {folder} holds some {info.name} files but not "
                        f"{', '.join(missing)} needed for the {split} split. Fix: copy the missing file(s) there, "
                        f"or remove the partial copy so spiketide downloads {info.name} into {target}.")
    missing = [f for f in required if not (target / f).is_file()]
    if not missing:
        return target
    looked = f"looked for {', '.join(required)} in {', '.join(map(str, [*user, target]))}"
    if not download:
        hint = (f"put the files into {root}" if root is not None else
                f"pass root=<folder with the files>, set ${ENV_VAR}")
        raise DataError(f"{info.name} {split} split not found ({looked}). Fix: {hint}, or allow download=True "
                        f"to fetch it into {target}.")
    try:
        for remote in SOURCES[info.name]:
            if any(f in remote.provides for f in missing):
                archive = fetch(remote.fname, target, url=remote.url, known_hash=remote.known_hash)
                if remote.extract:
                    _extract(archive, target, remote.provides)
    except DataError as err:
        raise DataError(f"{info.name} {split} split not found ({looked}) and not downloaded: {err}") from None
    still = [f for f in required if not (target / f).is_file()]
    if still:
        raise DataError(f"missing file {target / still[0]} after downloading {info.name}. Fix: delete {target} "
                        "and run again.")
    return target


# ----------------------------------------------------------------------------- downloads


def _split_hash(known_hash: str) -> tuple[str, str]:
    alg, _, value = known_hash.rpartition(":")
    return (alg or "sha256").lower(), value  # a bare digest is sha256, as in pooch


def verify_checksum(path: str | os.PathLike, known_hash: str, *, url: str | None = None) -> None:
    """Raise DataError unless ``path`` hashes to ``known_hash`` (``"md5:<hex>"``; a bare digest is sha256)."""
    import pooch

    alg, expected = _split_hash(known_hash)
    try:
        actual = pooch.file_hash(str(path), alg=alg)
    except OSError as err:
        raise DataError(f"cannot read {path} to checksum it: {err}") from None
    if actual.lower() != expected.lower():
        manual = f", or download {url} manually into {Path(path).parent}" if url else ""
        raise DataError(f"{path} failed its checksum: expected {alg} {expected}, got {actual} (corrupt, incomplete "
                        f"or another version). Fix: delete {path} and run again to re-download it{manual}.")


def fetch(fname: str, dest_dir: str | os.PathLike, *, url: str, known_hash: str) -> Path:
    """Download ``url`` to ``dest_dir/fname``, verify ``known_hash``, return the path.

    An existing file is verified, never overwritten. ``file://`` URLs are copied (local mirrors,
    tests). Any failure raises DataError; pooch deletes a download that fails its checksum.
    """
    import pooch

    path = Path(dest_dir) / fname
    if path.is_file():
        verify_checksum(path, known_hash, url=url)
        return path
    alg, expected = _split_hash(known_hash)
    manual = f"download {url} manually into {path.parent} (its {alg} must be {expected})"
    local = url.startswith("file://")
    try:
        return Path(pooch.retrieve(url, known_hash=known_hash, fname=fname, path=path.parent,
                                   downloader=_copy_file_url if local else None, progressbar=not local))
    except Exception as err:  # network errors come in many types (requests, OSError, ...)
        if isinstance(err, ValueError) and "hash" in str(err).lower():
            raise DataError(f"{fname} downloaded from {url} failed its checksum: expected {alg} {expected}. Fix: run "
                            f"again (the download may have been cut short), or {manual}.") from None
        raise DataError(f"cannot download {fname} from {url} ({type(err).__name__}: {err}). Fix: check the network "
                        f"connection, or {manual}.") from None


def _copy_file_url(url: str, output_file: str, pooch: Any = None) -> None:
    """A pooch downloader for ``file://`` URLs."""
    shutil.copyfile(unquote(urlparse(url).path), output_file)


def _extract(archive: Path, dest: Path, expected: tuple[str, ...]) -> None:
    """Extract a tar archive into ``dest``, replacing each incomplete top-level folder whole.

    Extracting into a private temp folder and renaming means concurrent processes (DDP ranks)
    never read half-written files, and a folder already complete is left alone.
    """
    fix = f"Fix: delete {archive} and run again, or extract it manually into {dest}."
    if not hasattr(tarfile, "data_filter"):  # before Python 3.11.4 tarfile extracts '..' and links as told
        raise DataError(f"extracting {archive} safely needs Python >= 3.11.4. Fix: upgrade Python, or extract it "
                        f"manually into {dest}.")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links out
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(f"cannot extract {archive}: {err}. {fix}") from None
        for top in sorted({f.split("/")[0] for f in expected}):
            mine = [f for f in expected if f.split("/")[0] == top]
            if all((dest / f).is_file() for f in mine):
                continue
            if not all((tmp / f).is_file() for f in mine):
                raise DataError(f"{archive} lacks {', '.join(mine)} (is it the right archive?). {fix}")
            shutil.rmtree(dest / top, ignore_errors=True)
            try:
                os.replace(tmp / top, dest / top)
            except OSError:
                if not all((dest / f).is_file() for f in mine):  # else another process just put it there
                    raise DataError(f"cannot move extracted {top}/ into {dest}. {fix}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- file readers

_FORMAT = {"fashion-mnist": "gzip IDX", "cifar10": "python pickle", "cifar100": "python pickle", "svhn": "MATLAB"}
_IDX = {2051: "a gzip-compressed file with IDX magic 2051 (uint8 images [N, 28, 28])",
        2049: "a gzip-compressed file with IDX magic 2049 (uint8 labels [N])"}
_CIFAR = "a python pickle of a dict with keys b'data' (uint8 [N, 3072]) and {key!r} (N ints)"
_SVHN = "a MATLAB (v5) file with X (uint8 [32, 32, 3, N]) and y ([N, 1], labels 1..10)"


class _Bad(ValueError):
    """A file's content is not what its format promises; the message says what was found."""


def _read(path: Path, name: str, expected: str, parse: Callable[[Path], Any]) -> Any:
    """``parse(path)``, turning any failure into one DataError that names the file and the fix."""
    try:
        return parse(path)
    except _Bad as err:
        problem = str(err)
    except Exception as err:  # a damaged file fails in many ways (gzip, pickle, scipy, numpy, OSError)
        problem = f"cannot read as {_FORMAT[name]} ({type(err).__name__}: {err})"
    url = next((r.url for r in SOURCES[name] if any(path.as_posix().endswith(f) for f in r.provides)), "")
    raise DataError(f"{path}: {problem}; expected {expected}. Fix: replace it with an intact copy of the official "
                    f"file ({url}), or delete the {name} files in {path.parent} so they are downloaded again.")


def _labels(y: np.ndarray, n: int, lo: int, hi: int) -> np.ndarray:
    """``y`` as int64 ``[n]``, checked to be one integer label in ``lo..hi`` per image."""
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        raise _Bad(f"labels are {y.dtype}, not integers")
    if len(y) != n:
        raise _Bad(f"{len(y)} labels for {n} images")
    if n and (y.min() < lo or y.max() > hi):
        raise _Bad(f"labels range over {y.min()}..{y.max()}; need labels in {lo}..{hi}")
    return y.astype(np.int64)


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """A gzipped IDX file of uint8: magic 2051 = images [N, 28, 28], 2049 = labels [N]."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = 3 if magic == 2051 else 1
    header, found = 4 + 4 * ndim, int.from_bytes(raw[:4], "big")
    if found != magic or len(raw) < header:
        raise _Bad(f"magic number is {found} (file of {len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise _Bad(f"header says shape {dims} but the file holds {len(raw) - header} data bytes")
    if ndim == 3 and dims[1:] != (28, 28):
        raise _Bad(f"images are {dims[1]}x{dims[2]}, not 28x28")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()  # copy: torch wants it writable


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and builtins: a pickle can otherwise run arbitrary code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"{np_core}.{module}", fn) for np_core in ("numpy.core", "numpy._core")  # numpy 1.x / 2.x names
        for module, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _parse_cifar(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise _Bad(f"the pickle holds a {type(obj).__name__}, not a dict")
    obj = {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}  # re-pickled copies use str keys
    for key in (b"data", label_key):
        if key not in obj:
            raise _Bad(f"key {key!r} is missing (keys: {sorted(map(repr, obj))})")
    x = np.asarray(obj[b"data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise _Bad(f"b'data' is a {x.dtype} array of shape {x.shape}")
    return x.reshape(-1, 3, 32, 32), _labels(np.asarray(obj[label_key]), len(x), 0, num_classes - 1)


def _parse_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    for key in ("X", "y"):
        if key not in mat:
            raise _Bad(f"variable {key} is missing")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _Bad(f"X is a {x.dtype} array of shape {x.shape}")
    if y.size != x.shape[3]:
        raise _Bad(f"y is a {y.dtype} array of shape {y.shape} for {x.shape[3]} images")
    # HWCN -> NCHW; SVHN stores digit 0 as class 10.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), _labels(y, x.shape[3], 1, 10) % 10


def _read_split(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, C, H, W] and labels int64 [N] of one split, read and checked."""
    if name == "digits":
        return _read_digits(folder / DIGITS_FILE, split)
    paths = [folder / f for f in _FILES[name][split]]
    if name == "fashion-mnist":
        x = _read(paths[0], name, _IDX[2051], lambda p: _parse_idx(p, 2051))
        y = _read(paths[1], name, _IDX[2049], lambda p: _labels(_parse_idx(p, 2049), len(x), 0, 9))
        return x[:, None], y
    if name == "svhn":
        return _read(paths[0], name, _SVHN, _parse_svhn)
    key, k = (b"labels", 10) if name == "cifar10" else (b"fine_labels", 100)
    parts = [_read(p, name, _CIFAR.format(key=key), lambda p: _parse_cifar(p, key, k)) for p in paths]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


# ----------------------------------------------------------------------------- digits (inside scikit-learn)

DIGITS_FILE = "digits.csv.gz"  # in sklearn/datasets/data/; hash taken from scikit-learn 1.9.1
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
DIGITS_SPLIT_SEED = 0  # the file has no train/test split: ours is fixed by this seed (changing it changes results)


def _digits_folder() -> Path:
    """``sklearn/datasets/data`` of the installed scikit-learn, found without importing it (slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError('the digits dataset ships inside scikit-learn, which is not installed. Fix: pip install '
                          'scikit-learn (or pip install "spiketide[digits]")')
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read_digits(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of the 1,797 digits: images uint8 [N, 1, 8, 8] (0..16 scaled to 0..255), labels int64 [N].

    The file (a row: 64 pixels, then the label) is checked against :data:`DIGITS_SHA256`. The test
    split is ``round(n / 4)`` images of each class (450 in all), drawn by a numpy Generator seeded
    with :data:`DIGITS_SPLIT_SEED`; the train split is the rest (1,347). Both keep file order.
    """
    fix = "Fix: reinstall scikit-learn (pip install --force-reinstall scikit-learn)"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}, the digits file of scikit-learn ({err}). {fix}.") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != DIGITS_SHA256:
        raise DataError(f"{path} failed its checksum: expected sha256 {DIGITS_SHA256}, got {actual} (damaged, or "
                        f"changed by another scikit-learn release). {fix}, or one that ships this file unchanged.")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")
    images = np.round(table[:, :64] * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    rng, test = np.random.default_rng(DIGITS_SPLIT_SEED), np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: round(len(idx) / 4)]] = True
    keep = np.flatnonzero(test == (split == "test"))
    return images[keep], labels[keep]


# ----------------------------------------------------------------------------- loading


def balanced_subset_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of size ``n``, in a seeded shuffled order.

    Each class gets ``n // num_classes``, the remainder going one each to the first classes.
    A class with too few images gives its shortfall to the others (SVHN is imbalanced).
    """
    labels = labels.cpu()
    if not 1 <= n <= len(labels):
        raise ConfigError(f"subset={n} must be between 1 and the size of the split ({len(labels)} images)")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota, remaining = [0] * num_classes, n
    while remaining:
        open_ = [c for c in range(num_classes) if quota[c] < counts[c]]
        share, extra = divmod(remaining, len(open_))
        for i, c in enumerate(open_):
            take = min(share + (i < extra), counts[c] - quota[c])
            quota[c] += take
            remaining -= take
    g = torch.Generator().manual_seed(int(seed))
    by_class = torch.split(torch.argsort(labels, stable=True), counts)  # ascending index within a class
    chosen = torch.cat([idx[torch.randperm(len(idx), generator=g)[: quota[c]]] for c, idx in enumerate(by_class)])
    return chosen[torch.randperm(len(chosen), generator=g)]


def load(name: str, split: str = "train", *, root: str | os.PathLike | None = None, subset: int | None = None,
         seed: int = 0, device: str | torch.device = "cpu", download: bool = True) -> ImageSet:
    """Load a split into memory as uint8 ``[N, C, H, W]`` on ``device``.

    ``subset=N`` keeps a class-balanced subset chosen (and shuffled) from ``seed``; ``None`` the
    whole split in file order. :func:`locate` says where files are found and when downloaded.
    """
    info = dataset_info(name)
    folder = locate(info.name, split, root=root, download=download)
    images, labels = map(torch.from_numpy, _read_split(info.name, folder, split))
    if subset is not None:
        idx = balanced_subset_indices(labels, info.num_classes, subset, seed)
        images, labels = images[idx], labels[idx]
    try:
        return ImageSet(images.contiguous(), labels, info.name, info.num_classes).to(device)
    except (RuntimeError, TypeError, AssertionError) as err:  # a typo, or CUDA asked for but not there
        raise ConfigError(f"cannot move {info.name} to device {str(device)!r}: {err}") from None


# ----------------------------------------------------------------------------- augmentation and batches


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw on the generator's device (so any generator works with data anywhere), then move."""
    where = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=where).to(device)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop to the input size after ``pad`` pixels of zero padding (uint8 in/out).

    ``out[b, :, i, j] = padded[b, :, dy[b] + i, dx[b] + j]`` with ``dy``, then ``dx``, drawn
    uniform in ``0..2*pad`` from ``generator``.
    """
    b, c, h, w = images.shape
    if pad == 0 or b == 0:
        return images
    padded, dev = F.pad(images, (pad, pad, pad, pad)), images.device
    dy, dx = _randint(2 * pad + 1, b, generator, dev), _randint(2 * pad + 1, b, generator, dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (one draw per image)."""
    if len(images) == 0:
        return images
    flip = _randint(2, len(images), generator, images.device).bool()[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


def augment(images: torch.Tensor, dataset_name: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation (:data:`AUGMENT`) of a uint8 batch ``[B, C, H, W]`` -> float32 in [0, 1].

    CIFAR-10/100: crop with 4 px zero padding + horizontal flip; SVHN: the same crop, no flip;
    Fashion-MNIST: crop with 2 px padding, no flip; digits: 1 px, no flip. Padding is black (pixel 0) before
    normalisation, like torchvision's ``RandomCrop(padding=...)``. Runs on the images' device;
    draws crop then flip from ``generator``, so the same state gives the same output.
    """
    info = dataset_info(dataset_name)
    shape = (info.channels, info.image_size, info.image_size)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape:
        raise ConfigError(f"augment({info.name!r}) expects uint8 images [B, {', '.join(map(str, shape))}], "
                          f"got {images.dtype} {tuple(images.shape)}")
    spec = AUGMENT[info.name]
    out = random_crop(images, spec.pad, generator)
    return to_float(random_flip(out, generator) if spec.flip else out)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images[idx], labels[idx])`` batches over one epoch; the last may be smaller.

    With ``shuffle`` the order is ``torch.randperm`` from ``generator``, drawn now, at the call.
    """
    if len(images) != len(labels) or batch_size < 1:
        raise ConfigError(f"batches needs one label per image and batch_size >= 1, got {len(images)} images, "
                          f"{len(labels)} labels, batch_size={batch_size}")
    n = len(images)
    where = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n, generator=generator, device=where) if shuffle else torch.arange(n)
    img_idx, lab_idx = order.to(images.device), order.to(labels.device)
    return ((images[img_idx[s:s + batch_size]], labels[lab_idx[s:s + batch_size]]) for s in range(0, n, batch_size))
