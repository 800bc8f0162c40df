"""Image datasets in their native formats, held in memory as uint8, with batched augmentation.

Supported: ``fashion-mnist`` (IDX ``.gz``), ``cifar10`` / ``cifar100`` (python pickles) and
``svhn`` (MATLAB ``.mat``). A whole split lives in memory as a uint8 tensor ``[N, C, H, W]``
on the requested device, so an epoch is a few index operations: :func:`batches` slices
shuffled (optionally DDP-sharded) batches and :func:`augment` applies random crop / flip to a
whole batch with tensor ops (no per-image Python, no DataLoader).

Where files are looked for, in order (:func:`locate`):

1. the ``root`` argument, then ``$SPIKETIDE_DATA`` -- each as the folder itself or its
   ``<name>/`` subfolder (also ``FashionMNIST/raw/``, the torchvision layout);
2. the system folder (``/usr/share/datasets/fashion-mnist``, Fashion-MNIST only);
3. the cache ``$XDG_CACHE_HOME/spiketide/<name>`` (default ``~/.cache/spiketide/<name>``).

When none holds the split, the official files are downloaded into the cache with pooch,
checked against their published MD5 and (CIFAR) extracted. Files placed in 1. or 2. are
never modified.
"""

from __future__ import annotations

import gzip
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

import numpy as np
import torch
import torch.nn.functional as F

from spiketide.errors import ConfigError, DataError

__all__ = [
    "AUGMENT",
    "DATASETS",
    "ENV_VAR",
    "SOURCES",
    "SYSTEM_DIRS",
    "Augmentation",
    "DatasetInfo",
    "ImageSet",
    "Remote",
    "augment",
    "balanced_subset_indices",
    "batches",
    "batches_per_epoch",
    "cache_dir",
    "dataset_info",
    "fetch",
    "load",
    "locate",
    "random_crop",
    "random_flip",
    "to_float",
    "verify_checksum",
]


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; ``mean``/``std`` are per channel, of pixels in [0, 1]."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), 60_000, 10_000
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50_000, 10_000
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50_000, 10_000
    ),
    "svhn": DatasetInfo(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 73_257, 26_032
    ),
}

_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "svhn": "svhn",
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name (case-insensitive; ``_`` and ``-`` are interchangeable)."""
    key = _ALIASES.get(str(name).strip().lower().replace("_", "-"))
    if key is None:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}"
        )
    return DATASETS[key]


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
    # Items are centred 28x28 and all shoes face the same way, so a flip makes
    # off-distribution images; a small (+-2 px) shift is the usual mild choice.
    "fashion-mnist": Augmentation(pad=2, flip=False),
}


# ----------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """A whole split in memory: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ConfigError(
                "ImageSet.images must be a uint8 tensor [N, C, H, W]; got "
                f"{_describe(self.images)} (convert with (x * 255).round().to(torch.uint8))"
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ConfigError(
                f"ImageSet.labels must be an int64 tensor [N]; got {_describe(self.labels)} "
                "(convert with labels.long().flatten())"
            )
        if len(self.images) != len(self.labels):
            raise ConfigError(
                f"ImageSet has {len(self.images)} images but {len(self.labels)} labels; they must match"
            )
        if self.num_classes < 1:
            raise ConfigError(f"ImageSet.num_classes must be >= 1, got {self.num_classes}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def info(self) -> DatasetInfo:
        """The registry entry for this set's dataset."""
        return dataset_info(self.name)

    def to(self, device: str | torch.device) -> ImageSet:
        """Return the set on ``device`` (tensors are shared, not copied, if already there)."""
        dev = _device(device)
        try:
            images, labels = self.images.to(dev), self.labels.to(dev)
        except (RuntimeError, AssertionError) as err:
            raise ConfigError(f"cannot move {self.name} to device {str(device)!r}: {err}") from None
        return ImageSet(images, labels, self.name, self.num_classes)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"invalid device {device!r} ({err}); use e.g. 'cpu' or 'cuda:0'") from None


# ----------------------------------------------------------------------------- files and sources

ENV_VAR = "SPIKETIDE_DATA"

# Read-only system copies (Fashion-MNIST comes from `apt-get install dataset-fashion-mnist`).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_FMNIST = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_C10 = "cifar-10-batches-py"
_C100 = "cifar-100-python"

# Files (relative to a dataset folder) each split needs.
_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist": _FMNIST,
    "cifar10": {
        "train": tuple(f"{_C10}/data_batch_{i}" for i in range(1, 6)),
        "test": (f"{_C10}/test_batch",),
    },
    "cifar100": {"train": (f"{_C100}/train",), "test": (f"{_C100}/test",)},
    "svhn": {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
}


@dataclass(frozen=True)
class Remote:
    """One official download: ``known_hash`` is pooch style (``"md5:..."`` / ``"sha256:..."``).

    ``provides`` lists the dataset files it yields; ``extract`` marks a tar archive.
    """

    fname: str
    url: str
    known_hash: str
    provides: tuple[str, ...]
    extract: bool = False


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

SOURCES: dict[str, tuple[Remote, ...]] = {
    "fashion-mnist": tuple(
        Remote(f, _FMNIST_URL + f, "md5:" + h, (f,))
        for f, h in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    "cifar10": (
        Remote(
            "cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "md5:c58f30108f718f92721af3b95e74349a",
            _FILES["cifar10"]["train"] + _FILES["cifar10"]["test"],
            extract=True,
        ),
    ),
    "cifar100": (
        Remote(
            "cifar-100-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "md5:eb9058c3a382ffc7106e4002c42a8d85",
            _FILES["cifar100"]["train"] + _FILES["cifar100"]["test"],
            extract=True,
        ),
    ),
    "svhn": (
        Remote(
            "train_32x32.mat",
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
            ("train_32x32.mat",),
        ),
        Remote(
            "test_32x32.mat",
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            "md5:eb5a983be6a315427106f1b164d9cef3",
            ("test_32x32.mat",),
        ),
    ),
}


def cache_dir(name: str) -> Path:
    """The download folder for ``name``: ``$XDG_CACHE_HOME/spiketide/<name>`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiketide" / dataset_info(name).name


def _candidates(name: str, root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """User and system folders to search, each with where it came from (for messages)."""
    bases: list[tuple[Path, str]] = []
    if root is not None:
        bases.append((Path(root).expanduser(), "the root argument"))
    env = os.environ.get(ENV_VAR)
    if env:
        bases.append((Path(env).expanduser(), f"${ENV_VAR}"))
    out: list[tuple[Path, str]] = []
    for base, origin in bases:
        out += [(base, origin), (base / name, origin)]
        if name == "fashion-mnist":
            out.append((base / "FashionMNIST" / "raw", origin))
    out += [(d, "the system folder") for d in SYSTEM_DIRS.get(name, ())]
    return out


def locate(
    name: str, split: str = "train", *, root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Return the folder holding ``split`` of ``name`` (see module docstring), downloading if allowed."""
    info = dataset_info(name)
    split = _check_split(split)
    required = _FILES[info.name][split]
    every = {f for files in _FILES[info.name].values() for f in files}
    searched: list[str] = []
    for folder, origin in _candidates(info.name, root):
        searched.append(f"{folder} ({origin})")
        if not any((folder / f).is_file() for f in every):
            continue
        missing = [f for f in required if not (folder / f).is_file()]
        if not missing:
            return folder
        # A partial copy is almost always a mistake; silently using another copy would hide it.
        raise DataError(
            f"missing file {folder / missing[0]}: {folder} ({origin}) holds some {info.name} files "
            f"but not {', '.join(missing)} needed for the {split} split. Fix: copy the missing "
            f"file(s) there, or remove the partial copy so spiketide can download {info.name} "
            f"into {cache_dir(info.name)}."
        )
    cache = cache_dir(info.name)
    searched.append(f"{cache} (cache)")
    missing = [f for f in required if not (cache / f).is_file()]
    if not missing:
        return cache
    if not download:
        raise DataError(
            f"{info.name} {split} split not found (looked for {', '.join(required)} in: "
            f"{'; '.join(searched)}). Fix: pass root=<folder with the files>, set ${ENV_VAR}, "
            f"or allow download=True to fetch it into {cache}."
        )
    for remote in SOURCES[info.name]:
        if any(f in remote.provides for f in missing):
            archive = fetch(remote.fname, cache, url=remote.url, known_hash=remote.known_hash)
            if remote.extract:
                _extract(archive, cache, remote.provides)
    still = [f for f in required if not (cache / f).is_file()]
    if still:
        raise DataError(
            f"missing file {cache / still[0]} after downloading {info.name}. Fix: delete {cache} "
            "and run again."
        )
    return cache


def verify_checksum(path: str | os.PathLike, known_hash: str, *, url: str | None = None) -> None:
    """Raise DataError unless ``path`` hashes to ``known_hash`` (``"md5:..."``, ``"sha256:..."``)."""
    import pooch

    path = Path(path)
    alg, expected = _split_hash(known_hash)
    if not path.is_file():
        raise DataError(f"cannot checksum {path}: no such file")
    try:
        actual = pooch.file_hash(str(path), alg=alg)
    except OSError as err:
        raise DataError(f"cannot read {path} to checksum it: {err}") from None
    if actual.lower() != expected.lower():
        source = f"download it manually from {url} " if url else "download it manually "
        raise DataError(
            f"{path} failed its checksum: expected {alg} {expected}, got {actual} (the file is "
            f"corrupt, incomplete or a different version). Fix: delete {path} and run again to "
            f"re-download it, or {source}into {path.parent}."
        )


def fetch(
    fname: str,
    dest_dir: str | os.PathLike,
    *,
    url: str,
    known_hash: str,
    downloader: Callable[..., Any] | None = None,
) -> Path:
    """Download ``url`` to ``dest_dir/fname`` and verify ``known_hash``; return the path.

    An existing file is verified, never overwritten. ``file://`` URLs are copied (local
    mirrors, tests); others go through pooch. Any failure raises DataError.
    """
    import pooch

    dest = Path(dest_dir)
    path = dest / fname
    alg, expected = _split_hash(known_hash)
    if path.is_file():
        verify_checksum(path, known_hash, url=url)
        return path
    if downloader is None and url.startswith("file://"):
        downloader = _copy_file_url
    manual = f"download {url} manually into {dest} (its {alg} must be {expected})"
    try:
        out = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=fname,
            path=dest,
            downloader=downloader,
            progressbar=downloader is None,
        )
    except ValueError as err:
        if "hash" in str(err).lower():
            # pooch has already deleted the bad download, so nothing to clean up.
            raise DataError(
                f"{fname} downloaded from {url} failed its checksum: expected {alg} {expected} "
                f"({err}). Fix: run again (the download may have been cut short), or {manual}."
            ) from None
        raise DataError(f"cannot download {fname} from {url}: {err}. Fix: {manual}.") from None
    except Exception as err:  # network errors come in many types (requests, OSError, ...)
        raise DataError(
            f"cannot download {fname} from {url}: {type(err).__name__}: {err}. Fix: check the "
            f"network connection, or {manual}."
        ) from None
    return Path(out)


def _split_hash(known_hash: str) -> tuple[str, str]:
    alg, sep, value = known_hash.partition(":")
    if not sep:
        alg, value = "sha256", known_hash  # pooch's default when no algorithm is named
    alg = alg.lower()
    if alg not in ("md5", "sha1", "sha256", "sha512") or not value:
        raise ConfigError(f"invalid known_hash {known_hash!r}; use e.g. 'md5:<hex digest>'")
    return alg, value


def _copy_file_url(url: str, output_file: Any, pooch: Any = None) -> None:
    """A pooch downloader for ``file://`` URLs."""
    from urllib.parse import unquote, urlparse

    src = Path(unquote(urlparse(url).path))
    with open(src, "rb") as fin:
        if hasattr(output_file, "write"):
            shutil.copyfileobj(fin, output_file)
        else:
            with open(output_file, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def _extract(archive: Path, dest: Path, expected: tuple[str, ...]) -> None:
    """Extract a tar archive into ``dest``, replacing each incomplete top-level folder whole.

    Extracting into a private temp folder and renaming means concurrent processes (e.g.
    DDP ranks) never read half-written files, and a folder already complete is left alone.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    fix = f"Fix: delete {archive} and run again, or extract it manually into {dest}."
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python < 3.11.4: refuse absolute paths, '..' and links ourselves
                    members = tar.getmembers()
                    for m in members:
                        target = (tmp / m.name).resolve()
                        if not (m.isfile() or m.isdir()) or not target.is_relative_to(tmp.resolve()):
                            raise DataError(f"{archive} contains an unsafe entry {m.name!r}. {fix}")
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(f"cannot extract {archive}: {err}. {fix}") from None
        for top in sorted({f.split("/")[0] for f in expected}):
            src, target = tmp / top, dest / top
            mine = [f for f in expected if f.split("/")[0] == top]
            if not all((src / f[len(top) + 1 :]).is_file() for f in mine):
                raise DataError(f"{archive} lacks {', '.join(mine)} (is it the right archive?). {fix}")

            def complete() -> bool:
                return all((dest / f).is_file() for f in mine)

            if complete():
                continue
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(src, target)
            except OSError:
                if not complete():  # another process may have just put a complete copy there
                    raise DataError(f"cannot move extracted {top}/ into {dest}. {fix}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- parsers


def _corrupt(path: Path, name: str, problem: str, expected: str) -> DataError:
    """A DataError naming the file, what was wrong, what was expected and how to fix it."""
    remotes = [r for r in SOURCES[name] if any(path.as_posix().endswith(f) for f in r.provides)]
    official = f" (official copy: {remotes[0].url})" if remotes else ""
    return DataError(
        f"{path}: {problem}; expected {expected}. Fix: replace it with an intact copy of the "
        f"official file{official}, or remove the {name} files from {path.parent} so spiketide "
        f"downloads them into {cache_dir(name)}."
    )


def _missing(path: Path, name: str) -> DataError:
    return DataError(
        f"missing file {path}. Fix: put the official {name} file there, or let spiketide "
        f"download it (download=True) into {cache_dir(name)}."
    )


def _read_bytes(path: Path, name: str, expected: str, *, gz: bool = False) -> bytes:
    if not path.is_file():
        raise _missing(path, name)
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        what = "a readable gzip file" if gz else "readable"
        raise _corrupt(path, name, f"not {what} ({err}; truncated or corrupt?)", expected) from None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file (uint8 data): magic 2051 = images [N, H, W], 2049 = labels [N]."""
    ndim = {2051: 3, 2049: 1}[magic]
    kind = f"IDX magic {magic} ({'images' if magic == 2051 else 'labels'}, uint8, {ndim}-d)"
    data = _read_bytes(path, "fashion-mnist", f"a gzip-compressed file with {kind}", gz=True)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, "fashion-mnist", f"only {len(data)} bytes, too short for a header", kind)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _corrupt(path, "fashion-mnist", f"magic number is {found}", kind)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)
    if len(data) - header != count:
        raise _corrupt(
            path, "fashion-mnist",
            f"header says shape {dims} ({count} bytes of data) but the file holds {len(data) - header}",
            f"{kind} with matching size",
        )
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and builtins: a pickle can otherwise run arbitrary code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar(path: Path, name: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    expected = f"a python pickle of a dict with keys b'data' (uint8 [N, 3072]) and {label_key!r}"
    raw = _read_bytes(path, name, expected)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # unpickling can fail in many ways on a damaged file
        raise _corrupt(path, name, f"cannot unpickle ({type(err).__name__}: {err})", expected) from None
    if not isinstance(obj, dict):
        raise _corrupt(path, name, f"pickle holds a {type(obj).__name__}, not a dict", expected)

    def get(key: bytes) -> Any:
        for k in (key, key.decode()):
            if k in obj:
                return obj[k]
        raise _corrupt(path, name, f"key {key!r} is missing (keys: {sorted(map(repr, obj))})", expected)

    data, labels = get(b"data"), get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _corrupt(path, name, f"b'data' is {_np_describe(data)}", expected)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(path, name, f"{label_key!r} is {_np_describe(labels)}", f"{expected}, labels a list of ints")
    if len(labels) != len(data):
        raise _corrupt(path, name, f"{len(labels)} labels for {len(data)} images", "one label per image")
    _check_labels(labels, path, name, num_classes)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _check_labels(labels: np.ndarray, path: Path, name: str, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(
            path, name, f"labels range over {labels.min()}..{labels.max()}",
            f"labels in 0..{num_classes - 1}",
        )


def _np_describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    return f"a {type(x).__name__}"


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    expected = "a MATLAB (v5) file with X (uint8 [32, 32, 3, N]) and y ([N, 1], labels 1..10)"
    if not path.is_file():
        raise _missing(path, "svhn")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError, OSError, TypeError ... on damaged files
        raise _corrupt(path, "svhn", f"cannot read as MATLAB ({type(err).__name__}: {err})", expected) from None
    for key in ("X", "y"):
        if key not in mat:
            raise _corrupt(path, "svhn", f"variable {key} is missing", expected)
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _corrupt(path, "svhn", f"X is {_np_describe(x)}", expected)
    n = x.shape[3]
    if y.size != n or not np.issubdtype(y.dtype, np.number):
        raise _corrupt(path, "svhn", f"y is {_np_describe(y)} for {n} images", expected)
    y = y.reshape(-1)
    if n and (y.min() < 1 or y.max() > 10 or np.any(y != np.round(y))):
        raise _corrupt(path, "svhn", f"labels range over {y.min()}..{y.max()}", expected)
    # SVHN stores digit 0 as class 10.
    labels = y.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def _read_split(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return images uint8 [N, C, H, W] and labels int64 [N], validated."""
    files = [folder / f for f in _FILES[name][split]]
    num_classes = DATASETS[name].num_classes
    if name == "fashion-mnist":
        images = _read_idx(files[0], 2051)
        labels = _read_idx(files[1], 2049).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise _corrupt(files[0], name, f"images are {images.shape[1]}x{images.shape[2]}", "28x28 images")
        if len(labels) != len(images):
            raise _corrupt(files[1], name, f"{len(labels)} labels for {len(images)} images in {files[0].name}",
                           "one label per image")
        _check_labels(labels, files[1], name, num_classes)
        return images[:, None], labels
    if name in ("cifar10", "cifar100"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        parts = [_read_cifar(f, name, key, num_classes) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return _read_svhn(files[0])


# ----------------------------------------------------------------------------- loading


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    return split


def balanced_subset_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of size ``n``, in a seeded shuffled order.

    Each class gets ``n // num_classes``, the remainder going one each to the first classes.
    A class with too few images gives its shortfall to the others (SVHN is imbalanced).
    """
    labels = labels.cpu()
    total = len(labels)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"subset must be a positive int, got {n!r}")
    if n > total:
        raise ConfigError(f"subset={n} is larger than the split ({total} images); use subset <= {total}")
    if total and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"labels must lie in 0..{num_classes - 1} for a balanced subset")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota = [0] * num_classes
    remaining = n
    while remaining:
        open_ = [c for c in range(num_classes) if quota[c] < counts[c]]
        share, extra = divmod(remaining, len(open_))
        for i, c in enumerate(open_):
            take = min(share + (i < extra), counts[c] - quota[c])
            quota[c] += take
            remaining -= take
    g = torch.Generator().manual_seed(int(seed))
    # One stable sort groups indices by class (ascending within a class).
    by_class = torch.split(torch.argsort(labels, stable=True), counts[:num_classes])
    picked = [idx[torch.randperm(len(idx), generator=g)[: quota[c]]] for c, idx in enumerate(by_class)]
    chosen = torch.cat(picked)
    return chosen[torch.randperm(len(chosen), generator=g)]


def load(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = True,
) -> ImageSet:
    """Load a split into memory as uint8 ``[N, C, H, W]`` on ``device``.

    ``subset=N`` keeps a class-balanced subset chosen (and shuffled) deterministically from
    ``seed``; ``None`` keeps the whole split in file order. See :func:`locate` for where
    files are found and when they are downloaded.
    """
    info = dataset_info(name)
    split = _check_split(split)
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"subset must be a positive int or None, got {subset!r}")
    dev = _device(device)
    folder = locate(info.name, split, root=root, download=download)
    images_np, labels_np = _read_split(info.name, folder, split)
    images, labels = torch.from_numpy(images_np), torch.from_numpy(labels_np)
    if subset is not None:
        if subset > len(labels):
            raise ConfigError(
                f"subset={subset} is larger than the {info.name} {split} split ({len(labels)} "
                f"images); use subset <= {len(labels)} or subset=None"
            )
        idx = balanced_subset_indices(labels, info.num_classes, subset, seed)
        images, labels = images[idx], labels[idx]
    return ImageSet(images.contiguous(), labels, info.name, info.num_classes).to(dev)


# ----------------------------------------------------------------------------- augmentation


def _check_images(images: Any, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigError(f"{what} expects uint8 images [B, C, H, W], got {_describe(images)}")


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw on the generator's device (so any generator works with any data) and move."""
    where = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=where).to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    _check_images(images, "to_float")
    return images.float().div_(255.0)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop to the input size after ``pad`` pixels of zero padding (uint8 in/out).

    Image b is shifted so that ``out[b, :, i, j] = padded[b, :, dy[b] + i, dx[b] + j]`` with
    ``dy, dx`` uniform in ``0..2*pad``; draws ``dy`` then ``dx`` from ``generator``.
    """
    _check_images(images, "random_crop")
    if pad < 0:
        raise ConfigError(f"pad must be >= 0, got {pad}")
    b, c, h, w = images.shape
    if pad == 0 or b == 0:
        return images
    padded = F.pad(images, (pad, pad, pad, pad))
    dev = images.device
    dy = _randint(2 * pad + 1, b, generator, dev)
    dx = _randint(2 * pad + 1, b, generator, dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (one draw per image)."""
    _check_images(images, "random_flip")
    if len(images) == 0:
        return images
    flip = _randint(2, len(images), generator, images.device).bool()[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


def augment(images: torch.Tensor, dataset_name: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation for a uint8 batch ``[B, C, H, W]`` -> float32 in [0, 1].

    Per dataset (:data:`AUGMENT`): CIFAR-10/100 random crop with 4 px zero padding + random
    horizontal flip (the authors' transforms); SVHN the same crop, no flip (digits are not
    mirror-symmetric); Fashion-MNIST crop with 2 px padding, no flip. Padding is black
    (pixel 0) before normalisation, like torchvision's ``RandomCrop(padding=...)``.
    Runs on the images' device; the same ``generator`` state gives the same output.
    """
    info = dataset_info(dataset_name)
    _check_images(images, "augment")
    expected = (info.channels, info.image_size, info.image_size)
    if tuple(images.shape[1:]) != expected:
        raise ConfigError(
            f"augment({info.name!r}) expects images [B, {expected[0]}, {expected[1]}, {expected[2]}], "
            f"got {tuple(images.shape)}"
        )
    spec = AUGMENT[info.name]
    out = random_crop(images, spec.pad, generator)
    if spec.flip:
        out = random_flip(out, generator)
    return to_float(out)


# ----------------------------------------------------------------------------- batching


def batches_per_epoch(n: int, batch_size: int, *, drop_last: bool = False, num_replicas: int = 1) -> int:
    """How many batches each rank gets from :func:`batches` for ``n`` samples."""
    per_rank = n // num_replicas
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images[idx], labels[idx])`` batches over one epoch of in-memory tensors.

    With ``shuffle`` the order is ``torch.randperm`` from ``generator`` (drawn now, when
    called, not lazily). DDP sharding: the permutation is cut to a multiple of
    ``num_replicas`` (dropping at most ``num_replicas - 1`` samples, different ones each
    epoch) and rank ``r`` takes ``perm[r::num_replicas]``. Ranks seeded alike get the same
    permutation, so their shards are disjoint, equal in size and give every rank the same
    number of batches (DDP needs that to avoid hanging).
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ConfigError("batches expects images and labels as tensors")
    if len(images) != len(labels):
        raise ConfigError(f"batches got {len(images)} images but {len(labels)} labels; they must match")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ConfigError(f"num_replicas must be a positive int, got {num_replicas!r}")
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ConfigError(f"rank must be in 0..{num_replicas - 1}, got {rank!r}")
    n = len(images)
    if shuffle:
        where = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=where)
    else:
        order = torch.arange(n)
    if num_replicas > 1:
        order = order[: n - n % num_replicas][rank::num_replicas]
    return _slices(images, labels, order, batch_size, drop_last)


def _slices(
    images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int, drop_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    img_order = order.to(images.device)
    lab_order = img_order if labels.device == images.device else order.to(labels.device)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield images[img_order[start : start + batch_size]], labels[lab_order[start : start + batch_size]]
