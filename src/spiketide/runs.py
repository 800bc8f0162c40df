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

from spiketide.errors import CheckpointError, ConfigError, RunInUse

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint",
    "RunDir", "resolve_checkpoint", "git_commit",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to `path` with ordinary permissions (mkstemp alone would make it owner-only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


class RunDir:
    """One experiment's folder: config.json, metrics.jsonl, checkpoints/, figures/."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def checkpoint_path(self, epoch: int | None = None) -> Path:
        return self.checkpoints / ("last.pt" if epoch is None else f"epoch_{epoch:04d}.pt")

    def exists(self) -> bool:
        return self.config_path.is_file()

    _LOCK_FILES = (".lock", ".lock.owner")

    def is_empty(self) -> bool:
        """True when nothing of a run is there yet (a missing or empty folder; lock files do not count)."""
        if not self.path.exists():
            return True
        return all(p.name in self._LOCK_FILES for p in self.path.iterdir())

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

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path} is not a run directory (no config.json); pass the folder `spiketide train --out` wrote")
        try:
            return json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.config_path} is not valid JSON ({exc}); restore it or start a new run") from None

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        records = []
        for i, line in enumerate(self.metrics_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise CheckpointError(f"{self.metrics_path} line {i} is not valid JSON; the file was edited or damaged") from None
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


def git_commit() -> str | None:
    """The git commit of the installed source tree, if it is a checkout (recorded in config.json)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
