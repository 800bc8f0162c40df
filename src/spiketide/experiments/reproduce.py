"""`spiketide reproduce`: the paper's figures and tables over several seeds, trials scheduled on Ray, and a
report with a computed verdict per claim.

Layout of `--out` (default `experiments/`):
    runs/<trial id>/        one ordinary run directory per distinct training run, shared by experiments
    <experiment>/spec.json  which runs (seed x label) the experiment reads, at which scale
    <experiment>/report.md  its verdicts table and figure (PNG + PDF)
    REPORT.md               one table over every experiment found in the folder

Rerunning the same command skips finished trials and resumes half-finished ones (each trial is
idempotent and holds its run directory's lock while it writes); `spiketide report` rebuilds every
report from the run directories without training.

Ray only schedules. Without an address, a sweep starts its own local instance (whatever other instance or
cluster file the machine has) and a watchdog process that stops every process of that instance when the
driver ends, however it ends. With an address it joins that cluster; `--out` must then be a folder every
node sees at the same path, which is checked before any trial starts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from spiketide import data, progress
from spiketide.checkpoints import select_device
from spiketide.config import TrainConfig
from spiketide.errors import ConfigError, DataError, RunInUse
from spiketide.experiments.report import failure_path, write_reports
from spiketide.experiments.suite import EXPERIMENTS, SCALES, resolve_names, trial_seconds
from spiketide.experiments.trials import ANALYSES, RunResult, Trial, logged_to, run_trial, trial_id
from spiketide.fisher import temporal_fisher
from spiketide.runs import RunDir, atomic_write_json
from spiketide.train import Trainer

__all__ = ["plan", "schedule", "reproduce", "write_reports", "list_experiments", "check_request", "dry_run",
           "INCOMPLETE"]

# Exit status of `spiketide reproduce` when no trial failed but some are being run by another driver: the
# report is incomplete until they finish (0: complete, 1: some trials failed, 2: bad input).
INCOMPLETE = 3
# Longest wait for a cluster that does not answer, and between checks that the cluster can still run a trial.
_JOIN_TIMEOUT_S, _RECHECK_S = 25.0, 30.0


def plan(names: Sequence[str], scale: str, seeds: Sequence[int]) -> tuple[dict[str, Trial], dict[str, dict]]:
    """The distinct trials the experiments need, and each experiment's spec (seed -> label -> trial id)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    trials: dict[str, Trial] = {}
    specs: dict[str, dict] = {}
    for name in resolve_names(list(names)):
        exp = EXPERIMENTS[name]
        runs: dict[str, dict[str, str]] = {}
        for seed in seeds:
            for label, config in exp.grid(scale, seed).items():
                new = Trial(config)
                trial = trials.setdefault(new.id, new)
                for analysis, params in exp.analyses(scale, label).items():
                    trial.analyses.setdefault(analysis, params)
                runs.setdefault(str(seed), {})[label] = trial.id
        specs[name] = {"experiment": name, "scale": scale, "seeds": list(seeds), "runs": runs}
    # Longest first, so that no long trial starts last and leaves the other workers idle at the end.
    order = sorted(trials.values(), key=lambda t: -trial_seconds(scale, t.config, t.analyses))
    return {t.id: t for t in order}, specs


# -- the request, checked before anything starts ----------------------------------------------------------------

def check_request(workers: int | None = None, address: str | None = None, cpus_per_trial: Any = 1,
                  gpus_per_trial: Any = 0) -> None:
    """Refuse, in one line, numbers Ray would reject or wait on forever, and options that do not go together."""
    def whole(name: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")

    if workers is not None:
        whole("--workers (CPUs of the local Ray instance)", workers)
    whole("--cpus-per-trial (CPUs and torch threads of each trial)", cpus_per_trial)
    g = gpus_per_trial
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise ConfigError(f"--gpus-per-trial (GPUs of each trial) must be a finite number >= 0, got {g!r}")
    if g > 1 and g != int(g):
        raise ConfigError(f"--gpus-per-trial {g:g}: above 1 a trial takes whole GPUs (Ray shares only fractions of "
                          "one GPU); pass a whole number, or a fraction below 1 to share a GPU")
    if address is not None and workers is not None:
        raise ConfigError("--workers sizes a local Ray instance and --address joins a running cluster, whose size "
                          "its nodes set (`ray start --num-cpus`); pass one of them")
    if address is not None and address.startswith("ray://"):
        raise ConfigError(f"--address {address}: ray:// (Ray Client) is not supported; run `spiketide reproduce` "
                          "on a node of the cluster with --address HOST:PORT (the address `ray start --head` "
                          "prints) or --address auto")
    if workers is not None and cpus_per_trial > workers:
        raise ConfigError(f"each trial asks for {cpus_per_trial} CPUs (--cpus-per-trial) but the local Ray instance "
                          f"has {workers} (--workers {workers}), so no trial could ever start; lower "
                          "--cpus-per-trial or raise --workers")


def _resolve_out(out: str | os.PathLike, create: bool = True) -> Path:
    """--out as an absolute path (Ray workers run in another working directory, or on other nodes), checked to be
    writable; created only when `create`, so that a request refused later leaves no folder behind."""
    root = Path(out).expanduser().absolute()
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    problem = None
    if existing is not None and not existing.is_dir():
        problem = f"{existing} is a file"
    elif existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if create and problem is None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-").close()
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
    if problem:
        raise ConfigError(f"--out {root}: cannot write there ({problem}); pass a folder you can write")
    return root


# -- the Ray instance: a local one with a watchdog, or a running cluster ---------------------------------------

# Run as `python -c` beside the driver (stdlib only, so it starts in milliseconds and holds little memory).
# It notes the driver's children when it starts; the driver then starts Ray and writes "started", and the
# watchdog follows every process that descends from the children the driver gained meanwhile. When its stdin
# closes (the driver exited, crashed or was killed with -9) it stops every one of them still running: Ray's
# own reaper stops the head processes, but not the agents and trial workers they leave behind.
_WATCHDOG = r"""
import os, select, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
driver, me = int(sys.argv[1]), os.getpid()

def table():
    out = {}
    if os.path.isdir("/proc"):
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name, "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                    out[int(name)] = (int(fields[1]), fields[19])
                except (OSError, IndexError, ValueError):
                    pass
    else:
        ps = subprocess.run(["ps", "-axo", "pid=,ppid=,lstart="], capture_output=True, text=True).stdout
        for line in ps.splitlines():
            pid, ppid, *start = line.split()
            out[int(pid)] = (int(ppid), " ".join(start))
    return out

def tree(roots, procs):
    found, edge = set(), set(roots)
    while edge:
        found |= edge
        edge = {p for p, (pp, _) in procs.items() if pp in edge} - found
    return found

procs = table()
before = {p for p, (pp, _) in procs.items() if pp == driver}
roots, known = None, {}
sys.stdout.write("ready\n")
sys.stdout.flush()
buf = b""
while True:
    ready = select.select([0], [], [], 1.0)[0]
    procs = table()
    if roots is None:
        follow = tree({p for p, (pp, _) in procs.items() if pp == driver} - before - {me}, procs)
    else:
        follow = tree(roots, procs)
    known.update({p: procs[p][1] for p in follow if p in procs and p != me})
    if not ready:
        continue
    chunk = os.read(0, 4096)
    buf += chunk
    if b"started" in buf and roots is None:
        roots = {p for p, (pp, _) in procs.items() if pp == driver} - before - {me}
        known = {p: procs[p][1] for p in tree(roots, procs) if p != me}
    if not chunk:
        break
for sig in (signal.SIGTERM, signal.SIGKILL):
    procs = table()
    alive = tree({p for p, st in known.items() if p in procs and procs[p][1] == st}, procs) - {me}
    known.update({p: procs[p][1] for p in alive})
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    for _ in range(30):
        procs = table()
        if not any(p in procs and procs[p][1] == known[p] for p in alive):
            break
        time.sleep(0.1)
"""


class _Watchdog:
    """Stops the local Ray instance's processes when this driver ends, however it ends (see `_WATCHDOG`)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.proc.stdout.readline()  # it has noted the processes that are not Ray's

    def started(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"started\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('reproduce schedules its trials on Ray, which is not installed: pip install '
                          '"spiketide[sweep]"') from None
    return ray


@contextlib.contextmanager
def _quiet_auth_notice() -> Iterator[None]:
    """Ray announces on every start that token authentication is on: a notice, not something to act on."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _start_local(ray, workers: int | None, cpus_per_trial: int, gpus_per_trial: float) -> _Watchdog:
    """A fresh local instance (address="local": never a cluster named by a leftover cluster file)."""
    cpus = workers or os.cpu_count() or 1
    if cpus_per_trial > cpus:
        raise ConfigError(f"each trial asks for {cpus_per_trial} CPUs (--cpus-per-trial) but this machine has {cpus}, "
                          "so no trial could ever start; lower --cpus-per-trial, or join a cluster (--address)")
    if gpus_per_trial > 0:
        have = torch.cuda.device_count()
        if have < math.ceil(gpus_per_trial):
            raise ConfigError(f"each trial asks for {gpus_per_trial:g} GPUs (--gpus-per-trial) but this machine has "
                              f"{have} visible to torch, so no trial could ever start; drop --gpus-per-trial, or "
                              "join a cluster with GPUs (--address)")
    watchdog = _Watchdog()
    try:
        with _quiet_auth_notice():
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    except Exception as exc:
        watchdog.started()
        watchdog.close()
        raise ConfigError(f"could not start a local Ray instance ({_one_line(exc)}); Ray's logs are under "
                          f"{os.environ.get('RAY_TMPDIR') or '/tmp'}/ray/session_latest/logs") from None
    watchdog.started()
    return watchdog


def _cluster_address(address: str) -> tuple[str, str, int]:
    """(where the address came from, host, port) of --address auto or HOST:PORT."""
    source = f"--address {address}"
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS")
        try:
            from ray._common.utils import get_ray_address_file

            file = Path(get_ray_address_file(None))
        except ImportError:  # another Ray version: its documented default place
            file = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
        if env:
            address, source = env, f"RAY_ADDRESS={env}"
        elif file.is_file():
            address, source = file.read_text().strip(), f"{file} (written by the last `ray start --head`)"
        else:
            raise ConfigError(f"--address auto: no Ray cluster started on this machine ({file} does not exist and "
                              "RAY_ADDRESS is unset); start one with `ray start --head`, or pass --address HOST:PORT")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: expected auto or HOST:PORT, the address `ray start --head` prints "
                          "(like 10.0.0.5:6379)")
    return source, host.strip("[]"), int(port)


def _reachable(address: str) -> str:
    """HOST:PORT of --address, once something answers there (Ray itself would retry for minutes)."""
    source, host, port = _cluster_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {host}:{port} (from {source}: {exc.strerror or exc}); start its "
                          f"head there with `ray start --head --port {port}`, or pass the address it printed") from None
    return f"{host}:{port}"


def _join_cluster(ray, address: str) -> str:
    """Connect to a running cluster within `_JOIN_TIMEOUT_S`; every failure is one line naming the fix."""
    target = _reachable(address)
    if "RAY_AUTH_MODE" not in os.environ:
        # As Ray itself does for `auto`: a cluster started on a machine that holds a token (any local ray.init()
        # writes one) asks for it, and Ray sends none to an explicit address unless told to.
        with contextlib.suppress(ImportError), _quiet_auth_notice():
            from ray._private.authentication import authentication_token_setup as auth

            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    result: dict[str, Any] = {}

    def connect() -> None:
        try:
            ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - turned into one line below
            result["error"] = exc

    log = Path(tempfile.gettempdir()) / f"spiketide-ray-join-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    refused = False
    with logged_to(log):  # Ray's core prints a line per retry; the user gets one line
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline and not refused:
            thread.join(0.5)
            # Ray retries a refused token for half a minute before it gives up; one refusal is enough.
            refused = "InvalidAuthToken" in log.read_text(errors="replace")
    if result.get("ok"):
        log.unlink(missing_ok=True)
        return target
    exc = result.get("error")
    auth_fix = ("set RAY_AUTH_MODE=token on every node and on this machine, and copy the head node's token "
                "(~/.ray/auth_token, or the RAY_AUTH_TOKEN variable) to each of them")
    if refused or "InvalidAuthToken" in log.read_text(errors="replace"):
        log.unlink(missing_ok=True)
        raise ConfigError(f"the Ray cluster at {target} refused this driver's authentication token; {auth_fix}")
    if exc is None:
        raise ConfigError(f"the Ray cluster at {target} did not accept this driver within {_JOIN_TIMEOUT_S:.0f} s "
                          f"(is it a Ray head's GCS port? if token authentication is on: {auth_fix}); Ray's "
                          f"messages: {log}")
    text = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc).__name__ == "AuthenticationError" or "auth" in text.lower():
        raise ConfigError(f"the Ray cluster at {target} refused this driver's authentication token; {auth_fix}")
    raise ConfigError(f"cannot join the Ray cluster at {target}: {type(exc).__name__}: {text[:300]} (Ray's "
                      f"messages: {log})")


def _fits(ray, cpus: int, gpus: float) -> tuple[bool, str]:
    """Whether some alive node can run one trial, and the largest node's resources for the message."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes]
    ok = any(c >= cpus and g >= gpus for c, g in res)
    best = max(res, default=(0, 0))
    return ok, f"{len(nodes)} node(s), the largest with {best[0]:g} CPUs and {best[1]:g} GPUs"


def _check_fits(ray, cpus: int, gpus: float, where: str) -> None:
    ok, have = _fits(ray, cpus, gpus)
    if not ok:
        raise ConfigError(f"each trial asks for {cpus} CPUs and {gpus:g} GPUs (--cpus-per-trial, --gpus-per-trial) "
                          f"but {where} has {have}, so no trial could ever start; lower them, or add a node that "
                          "has them")


def _check_shared(ray, root: Path) -> None:
    """Every node that can run a trial must see --out at the same path: each trial writes its run there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = root / f".spiketide-shared-{os.getpid()}-{time.time_ns()}"
    marker.write_text("written by the driver of spiketide reproduce to check that every node sees this folder\n")
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    try:
        # os.path.isfile itself runs on each node: its worker imports nothing but Ray (a busy node starts it late)
        probe = ray.remote(os.path.isfile)
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes]
        try:
            seen = ray.get(refs, timeout=300)
        except Exception as exc:  # noqa: BLE001 - one line, whatever Ray raised
            raise ConfigError(f"could not check within 300 s that every node sees --out {root} "
                              f"({type(exc).__name__}); check that the nodes can start Ray workers (`ray status`)"
                              ) from None
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted({n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok})
    if blind:
        raise ConfigError(f"--out {root} is not visible at that path on node(s) {', '.join(blind)}; with --address, "
                          "--out must be on a file system every node mounts at the same path (NFS, a cluster file "
                          "system)")


@contextlib.contextmanager
def _ray_session(workers: int | None, address: str | None, cpus_per_trial: int, gpus_per_trial: float,
                 root: Path) -> Iterator[Any]:
    """Ray, ready to run trials: joined, started (and shut down afterwards) or the instance this process has."""
    ray = _import_ray()
    if ray.is_initialized():  # a Python caller's own instance (ray.init before reproduce): used as it is
        if address:
            _reachable(address)
        _check_fits(ray, cpus_per_trial, gpus_per_trial, "this process's Ray instance")
        yield ray
        return
    watchdog = None
    try:
        if address:
            _check_fits(ray, cpus_per_trial, gpus_per_trial, f"the Ray cluster at {_join_cluster(ray, address)}")
            _resolve_out(root)
            _check_shared(ray, root)
        else:
            watchdog = _start_local(ray, workers, cpus_per_trial, gpus_per_trial)
            _check_fits(ray, cpus_per_trial, gpus_per_trial, "the local Ray instance")
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.close()


# -- running the trials ---------------------------------------------------------------------------------------

@functools.cache  # one watching thread per worker process
def _exit_with_parent() -> None:
    """In a Ray worker: exit when its raylet dies, rather than train on for a driver that is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)  # run directories stay consistent: every write is atomic and resumable

    threading.Thread(target=watch, daemon=True, name="spiketide-parent-watch").start()


def _remote_trial(trial: Trial, root: str, threads: int) -> dict[str, Any]:
    """Runs inside a Ray worker: a failure comes back as a result, so the other trials go on."""
    _exit_with_parent()
    try:
        import ray

        node = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only for the report line
        node = socket.gethostname()
    try:
        return {**run_trial(trial, root, threads), "node": node}
    except RunInUse as exc:  # another driver (another `reproduce` on the same --out) is running this trial
        return {"id": trial.id, "elsewhere": str(exc).splitlines()[0], "node": node}
    except BaseException as exc:  # noqa: BLE001 - reported with the log's path, never raised into the driver
        return {"id": trial.id, "node": node, "error": _one_line(exc)[:500]}


def _unfinished(trials: dict[str, Trial], root: Path) -> dict[str, Trial]:
    return {i: t for i, t in trials.items() if not RunResult(t.run_dir(root)).done(t.analyses)}


def _run(ray, trials: dict[str, Trial], todo: dict[str, Trial], root: Path, *, cpus_per_trial: int,
         gpus_per_trial: float, show_progress: bool) -> dict[str, dict]:
    outcomes: dict[str, dict] = {i: {"id": i, "skipped": True} for i in trials if i not in todo}
    remote = ray.remote(_remote_trial).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=1)
    pending = {remote.remote(t, str(root), cpus_per_trial): i for i, t in todo.items()}
    start = time.monotonic()
    with progress.bar(len(trials), "trials", enabled=show_progress, unit="trial", leave=True) as bar:
        bar.update(len(outcomes))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_RECHECK_S)
            if not ready:
                ok, have = _fits(ray, cpus_per_trial, gpus_per_trial)
                if not ok:  # the nodes that could run a trial left the cluster: waiting would never end
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    raise ConfigError(f"the Ray cluster now has {have}: no node left can run a trial of "
                                      f"{cpus_per_trial} CPUs and {gpus_per_trial:g} GPUs; {len(pending)} trials were "
                                      "not run. Rerun the same command when the nodes are back")
                continue
            i = pending.pop(ready[0])
            log = trials[i].run_dir(root) / "trial.log"
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - the worker died (out of memory, killed): a failed trial
                out = {"id": i, "error": _one_line(exc)[:500]}
            at = f" on {out['node']}" if out.get("node") else ""
            if "error" in out:
                out["log"] = str(log)
                atomic_write_json(failure_path(root, i), out)
                line = f"FAILED {i}{at}: {out['error']} (log: {log})"
            elif "elsewhere" in out:
                line = f"running elsewhere {i}: {out['elsewhere']}"
            else:
                failure_path(root, i).unlink(missing_ok=True)
                line = (f"done {i}{at}: test acc {out['test_acc']:.3f}, train loss {out['train_loss']:.4f}, "
                        f"{out['seconds']:.0f} s")
            outcomes[i] = out
            bar.write(f"[{len(outcomes)}/{len(trials)}, {time.monotonic() - start:.0f} s] {line}")
            bar.update(1)
    for i, out in outcomes.items():  # the other driver may have finished them meanwhile
        if "elsewhere" in out and RunResult(trials[i].run_dir(root)).done(trials[i].analyses):
            outcomes[i] = {"id": i, "skipped": True, "finished_elsewhere": True}
    return outcomes


def schedule(trials: dict[str, Trial], root: str | os.PathLike, *, workers: int | None = None,
             address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: float = 0,
             show_progress: bool = True) -> dict[str, dict]:
    """Run every unfinished trial on Ray; returns trial id -> summary: {"skipped"}, {"error", "log"} (failed),
    {"elsewhere"} (another driver holds its run directory) or the trial's summary."""
    check_request(workers, address, cpus_per_trial, gpus_per_trial)
    root = _resolve_out(root, create=False)
    todo = _unfinished(trials, root)
    if not todo:
        return {i: {"id": i, "skipped": True} for i in trials}
    with _ray_session(workers, address, cpus_per_trial, gpus_per_trial, root) as ray:
        _resolve_out(root)
        return _run(ray, trials, todo, root, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                    show_progress=show_progress)


def reproduce(names: Sequence[str], scale: str, seeds: Sequence[int], out: str | os.PathLike, *,
              workers: int | None = None, address: str | None = None, cpus_per_trial: int = 1,
              gpus_per_trial: float = 0, show_progress: bool = True) -> tuple[Path, dict[str, dict]]:
    """Plan, schedule and report; returns (REPORT.md, trial outcomes). Nothing is written, and Ray is not
    started, before the request and the cluster are checked."""
    check_request(workers, address, cpus_per_trial, gpus_per_trial)
    trials, specs = plan(names, scale, seeds)
    root = _resolve_out(out, create=False)
    todo = _unfinished(trials, root)
    session = (_ray_session(workers, address, cpus_per_trial, gpus_per_trial, root) if todo
               else contextlib.nullcontext(None))
    with session as ray:
        _resolve_out(root)
        for name, spec in specs.items():
            atomic_write_json(root / name / "spec.json", spec)
        outcomes = (_run(ray, trials, todo, root, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                         show_progress=show_progress) if todo else {i: {"id": i, "skipped": True} for i in trials})
    return write_reports(root), outcomes


# -- the dry run: every trial checked on a couple of images before GPU-hours are spent --------------------------

def _seconds(fn, device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _check_trial(trial: Trial, images: int, device: str) -> dict[str, Any]:
    """One training step on `images` images (BatchNorm needs two), then one Fisher measurement and each analysis
    on one image, in a temporary folder; returns what was measured."""

    dev = select_device(device)
    c = trial.config
    with tempfile.TemporaryDirectory(prefix="spiketide-dry-run-") as tmp:
        run = RunDir(Path(tmp) / "run")
        config = TrainConfig.from_dict({
            **c, "subset": images, "test_subset": images, "epochs": 1, "eval_every": 1, "fisher_every": 0,
            "batch_size": min(c["batch_size"], images), "checkpoint_epochs": [0, 1] if "deficits" in trial.analyses
            else [], "progress": False, "device": str(dev), "out": str(run.path)})
        trainer = Trainer(config, run_dir=run)
        params = sum(p.numel() for p in trainer.model.parameters())
        # Bytes of the activations autograd keeps for backward (parameters excluded), each storage counted once:
        # the part of a training step's memory that grows with the batch.
        saved: dict[tuple, int] = {}

        def pack(t):
            if not (t.is_leaf and t.requires_grad):
                s = t.untyped_storage()
                saved[(str(t.device), s.data_ptr())] = s.nbytes()
            return t

        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            history = trainer.fit()
        batch = config.batch_size
        row: dict[str, Any] = {
            "id": trial.id, "model": c["model"], "dataset": c["dataset"], "T": c["timesteps"], "params": params,
            "device": str(dev), "step_seconds": history[-1]["seconds"], "batch": batch,
            "activation_bytes_per_image": sum(saved.values()) / batch,
            "cuda_peak_bytes_per_image": ((torch.cuda.max_memory_allocated(dev) - base) / batch
                                          if dev.type == "cuda" else None),
        }
        if c["fisher_every"] > 0:  # one image: per-sample Fisher costs about T backward passes per image
            x = data.to_float(trainer.train_set.images[:1])
            y = trainer.train_set.labels[:1]
            row["fisher_seconds"] = _seconds(lambda: temporal_fisher(
                trainer.model, x, y, estimator=c["fisher_estimator"], per_layer=c["fisher_per_layer"],
                batch_size=c["fisher_batch_size"], seed=c["seed"]), dev)
        row["analyses"] = {}
        for name, p in trial.analyses.items():
            small = {"robustness": {"samples": 1}, "deficits": {"samples": 1, "epochs": [0, 1]},
                     "prune": {"rounds": 1, "retrain_epochs": 1}}[name]  # pruning retrains on the training images
            row["analyses"][name] = _seconds(lambda: ANALYSES[name](run, config, {**p, **small}), dev)
    return row


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def dry_run(names: Sequence[str], scale: str, seeds: Sequence[int], *, images: int = 2, device: str = "auto",
            say=lambda line: print(line, flush=True)) -> list[dict[str, Any]]:
    """Check every trial of the experiments before it is run, without Ray and without writing to any run directory.

    Locates every dataset split (raising DataError, one line, for what is missing and where it was looked for;
    nothing is downloaded), then for each distinct trial (seeds change neither cost nor data: one seed is
    checked) runs one training step on `images` images, one Fisher measurement and each analysis on one, in a
    temporary folder. Prints and returns per trial: parameters, step time, the activation memory per image, and
    the estimated GPU-hours from measured epoch times (`suite.trial_seconds`).
    """

    start = time.monotonic()
    trials, specs = plan(names, scale, seeds)
    missing, found = [], {}
    for ds in sorted({t.config["dataset"] for t in trials.values()}):
        try:
            found[ds] = [str(data.locate(ds, split, root=next(t.config["data_root"] for t in trials.values()
                                                              if t.config["dataset"] == ds), download=False))
                         for split in ("train", "test")]
        except DataError as exc:
            missing.append(str(exc).splitlines()[0].split(" Fix:")[0].rstrip("."))
    if missing:
        raise DataError(f"dry run: {'; '.join(missing)}. Fix: put the files in one of those folders, or set "
                        "$SPIKETIDE_DATA to a folder that holds them (or <name>/ folders with them); a run without "
                        "--dry-run downloads what is missing into the cache")
    first: dict[str, Trial] = {}
    for t in trials.values():  # one trial per config, whatever its seed
        first.setdefault(trial_id({**t.config, "seed": 0}), t)
    say(f"dry run at {scale} scale: {len(specs)} experiment(s), {len(first)} distinct trial(s) x {len(seeds)} seed(s) "
        f"= {len(trials)} runs, each checked with one training step on {images} images, Fisher and analyses "
        "on one; no run directory is written")
    for ds, (tr, te) in found.items():
        say(f"data {ds}: train {tr}, test {te}")
    # paper scale: GPU-hours from the measured H200 epoch; cpu and smoke: trial-minutes from the CPU epoch
    unit, per = ("GPU-h", 3600) if scale == "paper" else ("trial-min", 60)
    say(f"{'trial':<34} {'model':<9} {'dataset':<13} {'T':>2} {'params':>8} {'step s':>7} {'Fisher s':>8} "
        f"{'act. MB/img':>11} {'GPU MB/img':>10} {unit + '/seed':>14}  analyses (s)")
    rows = []
    for key, t in first.items():
        row = _check_trial(t, images, device)
        row["gpu_hours_per_seed"] = trial_seconds(scale, t.config, t.analyses) / 3600
        rows.append(row)
        an = ", ".join(f"{k} {v:.1f}" for k, v in row["analyses"].items()) or "-"
        fisher = f"{row['fisher_seconds']:.2f}" if "fisher_seconds" in row else "-"
        say(f"{row['id']:<34} {row['model']:<9} {row['dataset']:<13} {row['T']:>2} {row['params'] / 1e6:>7.2f}M "
            f"{row['step_seconds']:>7.2f} {fisher:>8} {_mb(row['activation_bytes_per_image']):>11} "
            f"{_mb(row['cuda_peak_bytes_per_image']):>10} {row['gpu_hours_per_seed'] * 3600 / per:>14.2f}  {an}")
    per_exp = ", ".join(f"{n} {EXPERIMENTS[n].hours(scale, len(seeds)) * 3600 / per:.1f}" for n in specs)
    total = _total_seconds(trials, scale) / per
    say(f"estimated {unit} for {len(seeds)} seed(s) (a run shared by experiments counts in each): {per_exp}")
    say(f"estimated {unit} for the {len(trials)} distinct runs: {total:.1f}; dry run took "
        f"{time.monotonic() - start:.0f} s on {rows[0]['device'] if rows else device}")
    return rows


def _total_seconds(trials: dict[str, Trial], scale: str) -> float:
    """Estimated seconds of these distinct trials, each counted once (`suite.trial_seconds`)."""
    return sum(trial_seconds(scale, t.config, t.analyses) for t in trials.values())


def list_experiments(seeds: Sequence[int] = (0, 1, 2)) -> str:
    """Every experiment with its claims, what each needs to be testable, and estimated cost per scale for `seeds`
    (runs shared between experiments are counted in each); last, the cost of them all, each run counted once."""
    n = len(seeds)
    lines = []
    for name, exp in EXPERIMENTS.items():
        cost = (f"smoke {exp.hours('smoke', 1) * 60:.1f} trial-min per seed; cpu {exp.hours('cpu', n) * 60:.0f} "
                f"trial-min for {n} seed(s); paper {exp.hours('paper', 1):.1f} GPU-h per seed")
        lines.append(f"{name}: {exp.title}\n    cost: {cost}")
        for c in exp.claims("paper"):
            lines.append(f"    - {c.claim.text} (paper: {c.claim.paper})")
            lines += [f"        requires: {p.text}" for p in c.requires]
    cpu, _ = plan(["all"], "cpu", seeds)
    paper, _ = plan(["all"], "paper", seeds)
    minutes, gpu_h = _total_seconds(cpu, "cpu") / 60, _total_seconds(paper, "paper") / 3600
    lines.append(f"all, {n} seed(s): {len(cpu)} distinct runs at cpu scale, about {minutes:.0f} trial-min: about "
                 f"{minutes / 2:.0f} min of wall time with --workers 2 on 2 cores; {len(paper)} at paper scale, about "
                 f"{gpu_h:.0f} GPU-h")
    return "\n".join(lines)
