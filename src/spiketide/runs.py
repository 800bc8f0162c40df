"""Run directories: config.json, metrics.jsonl, checkpoints/, figures/ — written atomically, read safely.

Nothing read from a run directory executes code: configs and metrics are JSON and checkpoints
are loaded with `torch.load(..., weights_only=True)`. A run directory is addressed only by the
path the caller gives (never by a path recorded inside it), and one process at a time writes it:
`RunDir.lock()` holds an OS file lock, which the kernel drops when its holder dies, so a lock
left by a killed process never blocks a resume.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import torch

from spiketide import __version__
from spiketide.checks import check_fields, json_kind
from spiketide.errors import CheckpointError, ConfigError, RunInUse

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint",
    "RunDir", "resolve_checkpoint", "run_of", "check_creatable", "environment", "git_commit",
]


def _temp_prefix(name: str) -> str:
    """How the temporary of an atomic write of file `name` begins (hidden, beside it)."""
    return f".{name}."


@contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file beside `path` to write; once written it is fsynced and renamed onto `path` (readers never
    see half a file), and removed if the writing fails or is interrupted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # ordinary permissions: mkstemp alone makes it owner-only
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any):
    """Replace NaN/inf by None so the files stay strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps(obj: Any, **kw) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), allow_nan=False, **kw)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """torch.save into a temp file, then rename, so a kill never leaves half a checkpoint."""
    with _replacing(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing code from it (weights_only=True); clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file written by `spiketide train` or a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's own message advises weights_only=False: exactly what must not be done with a file of
        # unknown origin, so it is not repeated here.
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}): it is corrupt, truncated, not a PyTorch file, or "
            "holds objects other than tensors and plain containers, which are refused for safety. Re-run training "
            "or pick another checkpoint."
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a spiketide checkpoint (expected a dict with 'model' and 'config')")
    return state


_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


# Per-epoch numbers a metrics record may hold: each a number or null (an unmeasured epoch).
_METRIC_NUMBERS = ("train_loss", "train_acc", "test_acc", "lr", "seconds", "images_per_second")
_DAMAGED = "the file was edited or damaged: restore it or start a new run"


def _check_record(record: Any, where: str) -> int:
    """A metrics.jsonl line: an object whose `epoch` is a whole number >= 0; returns that epoch."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is a JSON {json_kind(record)}, not an epoch record; {_DAMAGED}")
    epoch = record.get("epoch")
    if "epoch" not in record or isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        what = ("has no 'epoch'" if "epoch" not in record
                else f"has 'epoch' {json.dumps(epoch)}, not a whole number >= 0")
        raise CheckpointError(f"{where} {what}; {_DAMAGED}")
    for key in _METRIC_NUMBERS:
        v = record.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{where}: {key!r} is {json.dumps(v)}, not a number or null; {_DAMAGED}")
    if record.get("fisher") is not None and not isinstance(record["fisher"], dict):
        raise CheckpointError(f"{where}: 'fisher' is not an object; {_DAMAGED}")
    return epoch


class RunDir:
    """One experiment's folder: config.json, metrics.jsonl, checkpoints/, figures/."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path, self.metrics_path = self.path / "config.json", self.path / "metrics.jsonl"
        self.checkpoints, self.figures = self.path / "checkpoints", self.path / "figures"

    def checkpoint_path(self, epoch: int | None = None) -> Path:
        return self.checkpoints / ("last.pt" if epoch is None else f"epoch_{epoch:04d}.pt")

    def exists(self) -> bool:
        return self.config_path.is_file()

    _LOCK_FILES = (".lock", ".lock.owner")

    def is_empty(self) -> bool:
        """True when nothing of a run is there yet (a missing or empty folder; lock files do not count).

        Nor do their atomic-write temporaries (`..lock.owner.*.tmp`): another process may be writing one while
        this one looks (under DDP, rank 0 takes the lock while rank 1 checks the folder)."""
        if not self.path.exists():
            return True
        lock_temps = tuple(_temp_prefix(name) for name in self._LOCK_FILES)
        return all(p.name in self._LOCK_FILES or p.name.startswith(lock_temps) for p in self.path.iterdir())

    @contextmanager
    def lock(self, command: str = "spiketide") -> Iterator["RunDir"]:
        """Hold the run directory for writing; a second writer fails at once with RunInUse naming the holder."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run directory; pass a folder path")
        self.path.mkdir(parents=True, exist_ok=True)
        owner = self.path / ".lock.owner"
        lock = filelock.FileLock(self.path / ".lock", timeout=0, thread_local=False)
        try:
            lock.acquire()
        except PermissionError as exc:
            raise ConfigError(f"cannot lock {self.path} for writing: {exc.filename or self.path / '.lock'}: "
                              f"{exc.strerror}; fix its permissions or pick another folder") from None
        except filelock.Timeout:
            try:
                who = json.loads(owner.read_text())
                holder = f"pid {who['pid']} on host {who['host']} ({who['command']}, since {who['since']})"
            except (OSError, ValueError, KeyError):
                holder = "another process"
            raise RunInUse(f"{self.path} is being written by {holder}; wait for it to finish, or pick another "
                           "folder") from None
        try:
            # Holding the lock, no writer is active: temporaries are what a killed writer left half-written.
            for tmp in [*self.path.glob(".*.tmp*"), *self.path.glob("*/.*.tmp*")]:
                tmp.unlink(missing_ok=True)
            atomic_write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv})
            yield self
        finally:
            owner.unlink(missing_ok=True)
            lock.release()

    def create(self, config: dict) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        self.figures.mkdir(exist_ok=True)
        atomic_write_json(self.config_path, config)
        if not self.metrics_path.exists():
            atomic_write_text(self.metrics_path, "")
        return self

    def read_config(self, schema: type | None = None) -> dict:
        """config.json: a JSON object, checked against the dataclass `schema` when one is given (its
        `ADDED_LATER` mapping names the fields older runs lack and the value they implicitly had)."""
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path} is not a run directory (no config.json); pass the folder `spiketide train --out` wrote")
        try:
            config = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.config_path} is not valid JSON ({exc}); restore it or start a new run") from None
        if schema is not None:
            return check_fields(config, schema, self.config_path, getattr(schema, "ADDED_LATER", {}))
        if not isinstance(config, dict):
            raise CheckpointError(f"{self.config_path} holds a JSON {json_kind(config)}, not an object of settings; "
                                  "the file was edited or damaged: restore it or start a new run")
        return config

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl: one record per line, each an object with a whole-number `epoch`, epochs increasing."""
        if not self.metrics_path.exists():
            return []
        records: list[dict] = []
        try:
            lines = self.metrics_path.read_text().splitlines()
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.metrics_path} is not UTF-8 text; {_DAMAGED}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{self.metrics_path} line {i}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise CheckpointError(f"{where} is not valid JSON; the file was edited or damaged") from None
            epoch = _check_record(record, where)
            if records and epoch <= records[-1]["epoch"]:
                raise CheckpointError(f"{where} has epoch {epoch} after epoch {records[-1]['epoch']}; epochs must "
                                      "increase: the file was edited or damaged")
            records.append(record)
        return records

    def write_metrics(self, records: list[dict]) -> None:
        atomic_write_text(self.metrics_path, "".join(dumps(r) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        # Rewrite the whole (small) file atomically, under the caller's lock: a kill never leaves half a line.
        self.write_metrics(self.read_metrics() + [record])

    def saved_epochs(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _EPOCH_RE.search(p.name)))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A .pt file as given, or a run directory's final checkpoint (checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        last = RunDir(p).checkpoint_path()
        if not last.is_file():
            raise CheckpointError(f"{p} has no checkpoints/last.pt; is it a finished spiketide run directory?")
        return last
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a checkpoint .pt file or a run directory")
    return p


def run_of(checkpoint: str | os.PathLike) -> RunDir | None:
    """The run directory a checkpoint file lies in (`<run>/checkpoints/x.pt` or `<run>/x.pt`), if any."""
    p = Path(checkpoint)
    run = RunDir(p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    return run if run.exists() else None


def check_creatable(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before anything is written, a folder path that cannot be created or written.

    The nearest existing ancestor must be a folder this process may write; nothing is created here.
    (A privileged user passes os.access everywhere: the OS error at the write is then caught by the caller.)
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{option} {p} is a file; pass a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {p}: this folder is not writable by you; fix its permissions or pick "
                              "another folder")
        for name in RunDir._LOCK_FILES:  # a run directory's lock files are opened for writing too
            if (p / name).exists() and not os.access(p / name, os.W_OK):
                raise ConfigError(f"{option} {p}: its lock file {name} is not writable by you; fix its permissions "
                                  "or pick another folder")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {p} cannot be created: {parent} is a file, not a folder; pick another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {p} cannot be created: {parent} is not writable by you; pick a folder you "
                          "can write")


def environment() -> dict:
    """What produced a run, recorded in its config.json: spiketide's version and git commit, torch, Python, OS."""
    return {"spiketide_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def git_commit() -> str | None:
    """The git commit of the installed source tree, if it is a checkout (recorded in config.json)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
