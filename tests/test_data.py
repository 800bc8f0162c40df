"""Tests for spiketide.data: native-format readers, errors, data roots, downloads, subsets, augmentation, batching."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from spiketide import data
from spiketide.data import (
    AUGMENT,
    DATASETS,
    ImageSet,
    augment,
    balanced_subset_indices,
    batches,
    dataset_info,
    fetch,
    load,
    random_crop,
    random_flip,
    to_float,
    verify_checksum,
)
from spiketide import evaluation
from spiketide.errors import ConfigError, DataError

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Never touch the user's cache or $SPIKETIDE_DATA."""
    monkeypatch.delenv("SPIKETIDE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# ----------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, dims=None) -> None:
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    dims = dims if dims is not None else array.shape
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fmnist(folder: Path, n_train=12, n_test=5, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = np.arange(n) % 10 if labels is None else np.asarray(labels)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", lab)
        out[split] = (images, lab)
    return out


def write_cifar(path: Path, images: np.ndarray, labels, key=b"labels", protocol=2, extra=None) -> None:
    obj = {b"batch_label": b"test batch", b"data": images.reshape(len(images), -1), key: list(labels)}
    obj.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def make_cifar10(folder: Path, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        write_cifar(d / f"data_batch_{i}", x, y)
        train_x.append(x)
        train_y.append(y)
    tx = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    ty = np.array([0, 9, 3, 3])
    write_cifar(d / "test_batch", tx, ty)
    return np.concatenate(train_x), np.concatenate(train_y), tx, ty


def write_svhn(path: Path, x_hwcn: np.ndarray, y) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": x_hwcn, "y": np.asarray(y, dtype=np.uint8).reshape(-1, 1)})


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- registry


def test_registry_and_dataset_info():
    assert set(DATASETS) == {"fashion-mnist", "cifar10", "cifar100", "svhn", "digits"}
    assert dataset_info("CIFAR-10") is DATASETS["cifar10"]
    assert dataset_info("fashion_mnist").channels == 1
    assert DATASETS["cifar100"].num_classes == 100
    assert DATASETS["svhn"].train_size == 73_257
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.channels
        assert info.name in AUGMENT
    with pytest.raises(ConfigError, match="imagenet.*cifar10.*svhn"):
        dataset_info("imagenet")


# ----------------------------------------------------------------------------- round trips


def test_fashion_mnist_roundtrip(tmp_path):
    ref = make_fmnist(tmp_path / "fm")
    for split in ("train", "test"):
        s = load("fashion-mnist", split, root=tmp_path / "fm")
        images, labels = ref[split]
        assert s.images.shape == (len(images), 1, 28, 28) and s.images.dtype == torch.uint8
        assert s.labels.dtype == torch.int64
        assert torch.equal(s.images[:, 0], torch.from_numpy(images))
        assert torch.equal(s.labels, torch.from_numpy(labels).long())
        assert s.name == "fashion-mnist" and s.num_classes == 10 and len(s) == len(images)


def test_env_var_with_dataset_subfolder(tmp_path, monkeypatch):
    ref = make_fmnist(tmp_path / "datasets" / "fashion-mnist", seed=3)
    monkeypatch.setenv("SPIKETIDE_DATA", str(tmp_path / "datasets"))
    s = load("fashion-mnist", "test")
    assert torch.equal(s.images[:, 0], torch.from_numpy(ref["test"][0]))


def test_cifar10_roundtrip_channel_major(tmp_path):
    train_x, train_y, test_x, test_y = make_cifar10(tmp_path)
    s = load("cifar10", "train", root=tmp_path)
    assert s.images.shape == (15, 3, 32, 32) and s.images.dtype == torch.uint8
    assert torch.equal(s.images, torch.from_numpy(train_x))  # batches 1..5 in order
    assert torch.equal(s.labels, torch.from_numpy(train_y).long())
    t = load("cifar10", "test", root=tmp_path)
    assert torch.equal(t.images, torch.from_numpy(test_x)) and t.labels.tolist() == test_y.tolist()
    # The flat 3072 row is R plane, G plane, B plane, each row-major.
    row = test_x[1].reshape(-1)
    assert t.images[1, 1, 2, 5].item() == row[1024 + 2 * 32 + 5]


def test_cifar_python2_style_pickle_loads(tmp_path):
    """The official pickles name numpy.core.multiarray (numpy 1.x / Python 2 era)."""
    d = tmp_path / "cifar-10-batches-py"
    make_cifar10(tmp_path)
    x = np.full((2, 3, 32, 32), 7, np.uint8)
    raw = pickle.dumps({b"data": x.reshape(2, -1), b"labels": [1, 2]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (d / "test_batch").write_bytes(raw)
    t = load("cifar10", "test", root=tmp_path)
    assert t.labels.tolist() == [1, 2] and int(t.images.sum()) == 7 * 2 * 3072


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    x = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    y = [0, 99, 50, 1, 2, 3]
    for split in ("train", "test"):
        write_cifar(d / split, x, y, key=b"fine_labels", protocol=5,
                    extra={b"coarse_labels": [0, 19, 1, 1, 1, 1]})
    s = load("cifar100", "test", root=tmp_path)
    assert s.num_classes == 100 and s.labels.tolist() == y
    assert torch.equal(s.images, torch.from_numpy(x))


def test_svhn_roundtrip_and_label_10_is_0(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = [10, 1, 9, 10, 5]
    write_svhn(tmp_path / "train_32x32.mat", x, y)
    s = load("svhn", "train", root=tmp_path)
    assert s.images.shape == (5, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [0, 1, 9, 0, 5]
    assert torch.equal(s.images, torch.from_numpy(x).permute(3, 2, 0, 1))
    assert s.images[3, 2, 7, 11].item() == x[7, 11, 2, 3]


# ----------------------------------------------------------------------------- digits (inside scikit-learn)


def test_digits_splits_sizes_pixels_and_stratification():
    train, test = load("digits", "train"), load("digits", "test")
    info = dataset_info("digits")
    assert (info.channels, info.image_size, info.num_classes) == (1, 8, 10)
    assert (len(train), len(test)) == (info.train_size, info.test_size) == (1347, 450)
    for s in (train, test):
        assert s.images.shape[1:] == (1, 8, 8) and s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert set(s.images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}
    assert train.images.max() == 255 and train.images.min() == 0
    # The two splits are exactly the file's 1,797 rows, each used once; the test split is round(n/4) per class.
    table = np.loadtxt(gzip.open(data._digits_folder() / data.DIGITS_FILE), delimiter=",")
    rows = np.concatenate([table[:, :64] * 255 / 16, table[:, 64:]], 1).round()
    ours = torch.cat([torch.cat([s.images.flatten(1), s.labels[:, None]], 1) for s in (train, test)]).numpy()
    assert len(ours) == len(rows) == 1797
    assert np.array_equal(ours[np.lexsort(ours.T)], rows[np.lexsort(rows.T)])
    per_class = np.bincount(table[:, 64].astype(int))
    assert torch.bincount(test.labels).tolist() == [round(n / 4) for n in per_class]
    assert (torch.bincount(train.labels) + torch.bincount(test.labels)).tolist() == per_class.tolist()
    # mean/std in DatasetInfo are those of the train pixels.
    px = to_float(train.images)
    assert px.mean().item() == pytest.approx(info.mean[0], abs=1e-4)
    assert px.std(unbiased=False).item() == pytest.approx(info.std[0], abs=1e-4)


def test_digits_deterministic_subset_and_root_ignored(tmp_path):
    a, b = load("digits", "test"), load("digits", "test", root=tmp_path / "nonexistent", download=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    s1, s2 = load("digits", "train", subset=100, seed=3), load("digits", "train", subset=100, seed=3)
    assert torch.equal(s1.images, s2.images) and torch.bincount(s1.labels).tolist() == [10] * 10
    assert data.locate("digits", "train", root=tmp_path).name == "data"  # sklearn/datasets/data


def test_digits_checksum_mismatch_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_digits_folder", lambda: tmp_path)
    with pytest.raises(DataError, match="cannot read .*digits.csv.gz.*reinstall scikit-learn"):
        load("digits", "train")
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:  # a well-formed file, just not the pinned one
        f.write(",".join(["16"] * 64 + ["3"]) + "\n")
    with pytest.raises(DataError, match=f"digits.csv.gz failed its checksum: expected sha256 {data.DIGITS_SHA256}, "
                                        "got [0-9a-f]{64}.*reinstall scikit-learn") as err:
        load("digits", "test")
    assert "\n" not in str(err.value)


def test_digits_without_scikit_learn_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(ConfigError, match=r"digits dataset ships inside scikit-learn.*pip install scikit-learn") as err:
        load("digits", "train")
    assert "\n" not in str(err.value) and "spiketide[digits]" in str(err.value)


# ----------------------------------------------------------------------------- corrupt / missing


def test_idx_bad_magic(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28)), magic=2049)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*2049.*IDX magic 2051"):
        load("fashion-mnist", root=tmp_path)


def test_idx_truncated_gzip(tmp_path):
    make_fmnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*gzip") as exc:
        load("fashion-mnist", root=tmp_path)
    assert "Fix:" in str(exc.value)


def test_idx_not_gzip(tmp_path):
    make_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load("fashion-mnist", "test", root=tmp_path)


def test_idx_size_mismatch(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28)), dims=(5, 28, 28))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*\(5, 28, 28\)"):
        load("fashion-mnist", root=tmp_path)


def test_idx_wrong_image_size(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 32, 32)))
    with pytest.raises(DataError, match="28x28"):
        load("fashion-mnist", root=tmp_path)


def test_label_count_mismatch(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*11 labels for 12 images"):
        load("fashion-mnist", root=tmp_path)


def test_labels_out_of_range(tmp_path):
    make_fmnist(tmp_path, labels=[0] * 11 + [10])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*0\.\.10.*0\.\.9"):
        load("fashion-mnist", root=tmp_path)
    make_cifar10(tmp_path / "c")
    write_cifar(tmp_path / "c/cifar-10-batches-py/data_batch_4", np.zeros((2, 3, 32, 32), np.uint8), [3, 10])
    with pytest.raises(DataError, match=r"data_batch_4.*labels in 0\.\.9"):
        load("cifar10", root=tmp_path / "c")
    for bad in ([1, 11], [0, 1]):
        write_svhn(tmp_path / "s/test_32x32.mat", np.zeros((32, 32, 3, 2), np.uint8), bad)
        with pytest.raises(DataError, match=r"test_32x32\.mat.*labels range"):
            load("svhn", "test", root=tmp_path / "s")


def test_cifar_missing_key_and_not_a_pickle(tmp_path):
    make_cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch.*b'labels'.*missing"):
        load("cifar10", "test", root=tmp_path)
    p.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"test_batch.*python pickle"):
        load("cifar10", "test", root=tmp_path)
    write_cifar(p, np.zeros((2, 3, 16, 16), np.uint8), [1, 2])
    with pytest.raises(DataError, match=r"test_batch.*b'data' is a uint8 array of shape \(2, 768\)"):
        load("cifar10", "test", root=tmp_path)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_cannot_run_code(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(str(marker))]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        load("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_missing_file_in_partial_copy(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing file .*data_batch_3") as exc:
        load("cifar10", "train", root=tmp_path)
    assert "Fix:" in str(exc.value)
    load("cifar10", "test", root=tmp_path)  # the test split is complete


def test_svhn_corrupt(tmp_path):
    p = tmp_path / "train_32x32.mat"
    p.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataError, match=r"train_32x32\.mat.*MATLAB \(v5\) file with X"):
        load("svhn", root=tmp_path)
    write_svhn(p, np.zeros((32, 32, 3, 40), np.uint8), [1] * 40)
    p.write_bytes(p.read_bytes()[:-5000])  # truncated download
    with pytest.raises(DataError, match=r"train_32x32\.mat.*cannot read as MATLAB"):
        load("svhn", root=tmp_path)
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError, match=r"train_32x32\.mat.*variable y is missing"):
        load("svhn", root=tmp_path)
    write_svhn(tmp_path / "train_32x32.mat", np.zeros((32, 32, 3, 2), np.uint8), [1, 2, 3])
    with pytest.raises(DataError, match=r"train_32x32\.mat.*y is"):
        load("svhn", root=tmp_path)


def test_not_found_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKETIDE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match=r"cifar10 test split not found.*test_batch.*SPIKETIDE_DATA.*download=True"):
        load("cifar10", "test", download=False)


# ----------------------------------------------------------------------------- explicit data root


def test_nonexistent_root_is_an_error_not_a_fallback(tmp_path):
    """Used to load the system Fashion-MNIST silently while config.json recorded the missing root."""
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ConfigError, match=rf"--data-root {missing} does not exist; create it or omit --data-root"):
        load("fashion-mnist", "test", root=missing)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        load("fashion-mnist", "test", root=tmp_path / "a-file")


def test_empty_root_never_loads_the_system_copy(tmp_path):
    with pytest.raises(DataError, match=rf"fashion-mnist test split not found.*t10k-images-idx3-ubyte\.gz.*"
                                        rf"in {tmp_path}.*put the files into {tmp_path}") as exc:
        load("fashion-mnist", "test", root=tmp_path, download=False)
    assert str(FMNIST_SYSTEM) not in str(exc.value)
    with pytest.raises(DataError, match=rf"{tmp_path}"):
        data.locate("fashion-mnist", "test", root=tmp_path, download=False)


def _fmnist_mirror(tmp_path: Path, monkeypatch, reachable: bool = True) -> dict:
    """Point the Fashion-MNIST sources at file:// copies of tiny files (or at files that are not there)."""
    ref = make_fmnist(tmp_path / "mirror", seed=9)
    remotes = tuple(data.Remote(r.fname, (tmp_path / "mirror" / r.fname).as_uri(), "md5:" + md5(tmp_path / "mirror" / r.fname),
                                r.provides) for r in data.SOURCES["fashion-mnist"])
    if not reachable:
        remotes = tuple(data.Remote(r.fname, (tmp_path / "offline" / r.fname).as_uri(), r.known_hash, r.provides)
                        for r in remotes)
    monkeypatch.setitem(data.SOURCES, "fashion-mnist", remotes)
    return ref


def test_empty_root_downloads_into_it(tmp_path, monkeypatch):
    ref = _fmnist_mirror(tmp_path, monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    s = load("fashion-mnist", "test", root=root)
    assert torch.equal(s.images[:, 0], torch.from_numpy(ref["test"][0]))  # the mirror's, not the system copy
    assert (root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (tmp_path / "xdg-cache").exists()  # nothing went to the cache
    assert data.locate("fashion-mnist", "train", root=root) == root / "fashion-mnist"  # downloads the rest


def test_empty_root_without_network_names_the_expected_files(tmp_path, monkeypatch):
    _fmnist_mirror(tmp_path, monkeypatch, reachable=False)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match=rf"fashion-mnist test split not found \(looked for t10k-images-idx3-ubyte\.gz, "
                                        rf"t10k-labels-idx1-ubyte\.gz in {root}.*cannot download .*manually into "
                                        rf"{root / 'fashion-mnist'}"):
        load("fashion-mnist", "test", root=root)


def test_cifar_download_into_root(tmp_path, monkeypatch):
    archive, (_, _, test_x, _) = _cifar_archive(tmp_path)
    remote = data.Remote(archive.name, archive.as_uri(), "md5:" + md5(archive),
                         data.SOURCES["cifar10"][0].provides, extract=True)
    monkeypatch.setitem(data.SOURCES, "cifar10", (remote,))
    (tmp_path / "root").mkdir()
    t = load("cifar10", "test", root=tmp_path / "root")
    assert torch.equal(t.images, torch.from_numpy(test_x))
    assert (tmp_path / "root" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()


def test_bad_arguments(tmp_path):
    make_fmnist(tmp_path)
    with pytest.raises(ConfigError, match="split"):
        load("fashion-mnist", "val", root=tmp_path)
    with pytest.raises(ConfigError, match="subset"):
        load("fashion-mnist", root=tmp_path, subset=0)
    with pytest.raises(ConfigError, match="device"):
        load("fashion-mnist", root=tmp_path, device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cannot move fashion-mnist to device 'cuda:0'"):
            load("fashion-mnist", root=tmp_path, device="cuda:0")


# ----------------------------------------------------------------------------- checksums / download


def test_verify_checksum(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(b"hello")
    verify_checksum(p, "md5:" + md5(p))
    verify_checksum(p, hashlib.sha256(b"hello").hexdigest())  # bare digest = sha256
    wrong = "0" * 32
    with pytest.raises(DataError, match=rf"blob\.bin failed its checksum: expected md5 {wrong}.*delete"):
        verify_checksum(p, "md5:" + wrong)


def test_fetch_file_url_ok_and_checksum_failure(tmp_path):
    src = tmp_path / "src" / "archive.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(1000))
    dest = tmp_path / "dest"
    wrong = "1" * 32
    with pytest.raises(DataError, match=rf"archive\.bin.*checksum.*md5 {wrong}.*manually into") as exc:
        fetch("archive.bin", dest, url=src.as_uri(), known_hash="md5:" + wrong)
    assert str(dest) in str(exc.value)
    assert not (dest / "archive.bin").exists()  # a bad download is never kept
    out = fetch("archive.bin", dest, url=src.as_uri(), known_hash="md5:" + md5(src))
    assert out == dest / "archive.bin" and out.read_bytes() == src.read_bytes()


def test_fetch_existing_corrupt_file_is_not_overwritten(tmp_path):
    src = tmp_path / "good.bin"
    src.write_bytes(b"good")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "good.bin").write_bytes(b"bad")
    with pytest.raises(DataError, match=r"good\.bin failed its checksum"):
        fetch("good.bin", tmp_path / "dest", url=src.as_uri(), known_hash="md5:" + md5(src))
    assert (tmp_path / "dest" / "good.bin").read_bytes() == b"bad"


def test_fetch_download_failure(tmp_path):
    with pytest.raises(DataError, match=r"cannot download nothere\.bin.*manually into"):
        fetch("nothere.bin", tmp_path / "d", url=(tmp_path / "nothere.bin").as_uri(), known_hash="md5:" + "0" * 32)


def _cifar_archive(tmp_path: Path) -> tuple[Path, tuple]:
    staging = tmp_path / "staging"
    ref = make_cifar10(staging, seed=5)
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, ref


def test_download_verify_extract_end_to_end(tmp_path, monkeypatch):
    archive, (train_x, _, test_x, test_y) = _cifar_archive(tmp_path)
    remote = data.Remote(archive.name, archive.as_uri(), "md5:" + md5(archive),
                         data.SOURCES["cifar10"][0].provides, extract=True)
    monkeypatch.setitem(data.SOURCES, "cifar10", (remote,))
    t = load("cifar10", "test")
    cache = tmp_path / "xdg-cache" / "spiketide" / "cifar10"
    assert (cache / "cifar-10-python.tar.gz").is_file()
    assert torch.equal(t.images, torch.from_numpy(test_x)) and t.labels.tolist() == test_y.tolist()
    archive.unlink()  # later loads must come from the cache
    assert torch.equal(load("cifar10", "train").images, torch.from_numpy(train_x))
    assert not list(cache.glob(".extract-*"))


def test_download_checksum_mismatch_raises(tmp_path, monkeypatch):
    archive, _ = _cifar_archive(tmp_path)
    remote = data.Remote(archive.name, archive.as_uri(), "md5:" + "f" * 32,
                         data.SOURCES["cifar10"][0].provides, extract=True)
    monkeypatch.setitem(data.SOURCES, "cifar10", (remote,))
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*ffffffff"):
        load("cifar10", "test")


def test_corrupt_archive_raises(tmp_path, monkeypatch):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar archive" * 100)[:-20])
    remote = data.Remote(bad.name, bad.as_uri(), "md5:" + md5(bad), data.SOURCES["cifar10"][0].provides, True)
    monkeypatch.setitem(data.SOURCES, "cifar10", (remote,))
    with pytest.raises(DataError, match=r"cannot extract .*cifar-10-python\.tar\.gz.*Fix"):
        load("cifar10", "test")


def test_official_sources_are_pinned():
    hashes = {r.fname: r.known_hash for rs in data.SOURCES.values() for r in rs}
    assert hashes["cifar-10-python.tar.gz"] == "md5:c58f30108f718f92721af3b95e74349a"
    assert hashes["test_32x32.mat"] == "md5:eb5a983be6a315427106f1b164d9cef3"
    assert len(hashes) == 8


# ----------------------------------------------------------------------------- subsets


def test_balanced_deterministic_subset(tmp_path):
    labels = np.repeat(np.arange(10), 12)
    make_fmnist(tmp_path, n_train=120, labels=labels)
    a = load("fashion-mnist", root=tmp_path, subset=25, seed=1)
    b = load("fashion-mnist", root=tmp_path, subset=25, seed=1)
    c = load("fashion-mnist", root=tmp_path, subset=25, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    counts = torch.bincount(a.labels, minlength=10).tolist()
    assert counts == [3] * 5 + [2] * 5
    assert a.labels.tolist() != sorted(a.labels.tolist())  # shuffled, not class-sorted
    full = load("fashion-mnist", root=tmp_path)
    # Every subset image is a distinct image of the split with its own label.
    idx = [int(torch.nonzero((full.images == img).flatten(1).all(1))[0]) for img in a.images]
    assert len(set(idx)) == 25 and full.labels[idx].tolist() == a.labels.tolist()
    with pytest.raises(ConfigError, match=r"subset=121.*\(120 images\)"):
        load("fashion-mnist", root=tmp_path, subset=121)


def test_subset_with_scarce_class_fills_from_others():
    labels = torch.tensor([0] + [1] * 10 + [2] * 10)
    idx = balanced_subset_indices(labels, 3, 9, seed=0)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [1, 4, 4]
    everything = balanced_subset_indices(labels, 3, 21, seed=0)
    assert sorted(everything.tolist()) == list(range(21))


# ----------------------------------------------------------------------------- augmentation


def test_to_float_is_the_evaluation_one():
    assert to_float is evaluation.to_float
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    y = to_float(x)
    assert y.dtype == torch.float32 and torch.allclose(y.flatten(), torch.tensor([0.0, 0.2, 1.0]))


@pytest.mark.parametrize("name", list(DATASETS))
def test_augment_shape_range_determinism(name):
    info = DATASETS[name]
    x = torch.randint(0, 256, (16, info.channels, info.image_size, info.image_size), dtype=torch.uint8)
    y1 = augment(x, name, torch.Generator().manual_seed(0))
    y2 = augment(x, name, torch.Generator().manual_seed(0))
    y3 = augment(x, name, torch.Generator().manual_seed(1))
    assert y1.shape == x.shape and y1.dtype == torch.float32
    assert 0.0 <= y1.min() and y1.max() <= 1.0
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    # Exactly crop (+ flip where configured), drawing in that order from the generator.
    g = torch.Generator().manual_seed(0)
    ref = random_crop(x, AUGMENT[name].pad, g)
    if AUGMENT[name].flip:
        ref = random_flip(ref, g)
    assert torch.equal(y1, to_float(ref))
    augment(x, name)  # default generator works too


def test_augment_policy():
    assert AUGMENT["cifar10"].pad == 4 and AUGMENT["cifar10"].flip
    assert AUGMENT["cifar100"].flip
    assert AUGMENT["svhn"].pad == 4 and not AUGMENT["svhn"].flip
    assert not AUGMENT["fashion-mnist"].flip
    assert AUGMENT["digits"].pad == 1 and not AUGMENT["digits"].flip


def test_random_crop_is_a_shift_of_the_padded_image():
    pad, x = 4, torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no zero pixels
    out = random_crop(x, pad, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    dy, dx = torch.randint(9, (64,), generator=g), torch.randint(9, (64,), generator=g)
    padded = F.pad(x, (pad,) * 4)
    for b in range(64):
        expected = padded[b, :, dy[b] : dy[b] + 32, dx[b] : dx[b] + 32]
        assert torch.equal(out[b], expected)
        # Zero border size matches the shift, so content really moved.
        zeros = int((out[b, 0] == 0).sum())
        assert zeros == 32 * 32 - (32 - abs(int(dy[b]) - pad)) * (32 - abs(int(dx[b]) - pad))
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 20  # many different shifts


def test_random_flip_flips_about_half():
    x = torch.randint(0, 256, (200, 1, 5, 5), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 60 < int(flipped.sum()) < 140


def test_augment_rejects_wrong_shape_or_dtype():
    with pytest.raises(ConfigError, match=r"\[B, 3, 32, 32\]"):
        augment(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "cifar10")
    with pytest.raises(ConfigError, match="uint8"):
        augment(torch.zeros(2, 3, 32, 32), "cifar10")


# ----------------------------------------------------------------------------- batching


def test_batches_cover_each_index_once():
    n = 23
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    labels = torch.arange(n)
    got = list(batches(images, labels, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5, 3] == [len(xb) for xb, _ in got]
    order = torch.cat([yb for _, yb in got])
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    assert all(torch.equal(xb.flatten().long(), yb) for xb, yb in got)
    g = torch.Generator().manual_seed(0)
    again = torch.cat([yb for _, yb in batches(images, labels, 5, shuffle=True, generator=g)])
    assert torch.equal(order, again)
    assert torch.equal(order, torch.randperm(n, generator=torch.Generator().manual_seed(0)))  # one randperm
    in_order = torch.cat([yb for _, yb in batches(images, labels, 5, shuffle=False)])
    assert in_order.tolist() == list(range(n))


def test_batches_bad_arguments():
    x, y = torch.zeros(4, 1, 1, 1, dtype=torch.uint8), torch.arange(4)
    with pytest.raises(ConfigError, match="batch_size"):
        batches(x, y, 0, shuffle=False)
    with pytest.raises(ConfigError, match="3 labels"):
        batches(x, y[:3], 2, shuffle=False)


# ----------------------------------------------------------------------------- ImageSet


def test_imageset_validation_and_to():
    s = ImageSet(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "fashion-mnist", 10)
    assert len(s) == 3
    moved = s.to("cpu")
    assert moved.images.device.type == "cpu" and moved.name == s.name
    with pytest.raises(ConfigError, match="uint8"):
        ImageSet(torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.int64), "x", 10)
    with pytest.raises(ConfigError, match="3 images but 2 labels"):
        ImageSet(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "x", 10)


# ----------------------------------------------------------------------------- real data


def test_real_fashion_mnist_from_system_folder():
    """The README's setup installs it (apt-get install dataset-fashion-mnist)."""
    assert data.locate("fashion-mnist", "train") == FMNIST_SYSTEM
    full = load("fashion-mnist", "train")
    assert full.images.shape == (60_000, 1, 28, 28) and full.num_classes == 10
    assert torch.bincount(full.labels).tolist() == [6000] * 10
    x = full.images.float() / 255
    info = DATASETS["fashion-mnist"]
    assert abs(x.mean().item() - info.mean[0]) < 1e-3 and abs(x.std().item() - info.std[0]) < 1e-3
    sub = load("fashion-mnist", "test", subset=1000)
    assert len(sub) == 1000 and torch.bincount(sub.labels).tolist() == [100] * 10
