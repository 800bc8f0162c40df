"""`spiketide reproduce` against real Ray processes, each run as a user would run it (a separate driver process):
a two-node cluster on this machine joined by --address, and a local sweep killed with -9.

Every Ray process here is started by these tests, in a temporary folder of their own, and stopped by PID
(never `ray stop`, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # the test extra installs it
RAY = Path(sys.executable).with_name("ray")


def _table() -> dict[int, tuple[int, bytes, str]]:
    """pid -> (ppid, start time, command line) of every process (Linux /proc)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
                if stat[0] == b"Z":  # a zombie runs nothing; its parent (or init) reaps it
                    continue
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out[int(name)] = (int(stat[1]), stat[19], cmd)
            except (OSError, IndexError, ValueError):
                pass
    return out


def _tree(roots: set[int], procs) -> dict[int, bytes]:
    """The processes descending from `roots` (included), with their start times (PIDs can be reused)."""
    found, edge = set(), {r for r in roots if r in procs}
    while edge:
        found |= edge
        edge = {p for p, (pp, _, _) in procs.items() if pp in edge} - found
    return {p: procs[p][1] for p in found}


def _alive(snapshot: dict[int, bytes]) -> list[int]:
    procs = _table()
    return [p for p, start in snapshot.items() if p in procs and procs[p][1] == start]


def _stop(snapshot: dict[int, bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in _alive(snapshot):
            try:
                os.kill(p, sig)
            except OSError:
                pass
        for _ in range(50):
            if not _alive(snapshot):
                return
            time.sleep(0.1)


def _ray_processes_under(folder: Path) -> dict[int, bytes]:
    """Ray's processes whose command line names `folder` (the GCS, raylets, monitors), with their descendants."""
    procs = _table()
    return _tree({p for p, (_, _, cmd) in procs.items() if str(folder) in cmd and p != os.getpid()}, procs)


def _driver(argv: list[str], env: dict, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spiketide.cli", "reproduce", *argv], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _communicate(d: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The driver's output; a driver past its time is stopped with everything it started, then the test fails."""
    try:
        return d.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(_tree({d.pid}, _table()))
        raise


def _short_tmp(prefix: str) -> Path:
    # Ray's unix sockets live under its temp folder; their paths must stay under 107 characters.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    return {**env, "RAY_TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def cluster():
    """`ray start --head` and a second node on 127.0.0.2, 1 CPU each, with token authentication on."""
    tmp = _short_tmp("st-cl-")
    token = uuid.uuid4().hex
    env = _env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        # both nodes on loopback addresses: no traffic leaves this machine
        subprocess.run([str(RAY), "start", "--head", "--port", "0", "--num-cpus", "1", "--include-dashboard",
                        "false", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"], env=env, cwd=tmp,
                       check=True, capture_output=True, timeout=300)
        address = (tmp / "ray" / "ray_current_cluster").read_text().strip()
        subprocess.run([str(RAY), "start", "--address", address, "--num-cpus", "1", "--node-ip-address", "127.0.0.2",
                        "--disable-usage-stats"], env=env, cwd=tmp, check=True, capture_output=True, timeout=300)
        yield {"tmp": tmp, "address": address, "token": token}
    finally:
        _stop(_ray_processes_under(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_node_cluster_runs_trials_on_both_nodes(cluster, tmp_path):
    # The driver holds the token but does not set RAY_AUTH_MODE (Ray would send no token to an explicit
    # address), and --out is relative: it must reach the workers, which run in the cluster's folder, absolute.
    env = _env(cluster["tmp"], RAY_AUTH_TOKEN=cluster["token"])
    start = time.monotonic()
    d = _driver(["fig1", "--scale", "smoke", "--seeds", "0,1", "--address", cluster["address"], "--out", "exp",
                 "--no-progress"], env, tmp_path)
    out, err = _communicate(d, 600)
    assert d.returncode == 0, err
    nodes = set(re.findall(r"^\[\d+/2, \d+ s\] done \S+ on (\S+):", out, re.M))
    assert len(nodes) == 2 and "127.0.0.2" in nodes, out  # one trial per 1-CPU node
    runs = sorted((tmp_path / "exp" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "checkpoints" / "last.pt").is_file() for r in runs)
    assert not (cluster["tmp"] / "exp").exists()  # nothing landed in the workers' working directory
    assert "fig1" in (tmp_path / "exp" / "REPORT.md").read_text()
    print(f"two-node smoke fig1 (2 trials): {time.monotonic() - start:.0f} s")


def test_wrong_token_and_dead_address_fail_in_one_line_within_30_s(cluster, tmp_path):
    env = _env(cluster["tmp"], RAY_AUTH_TOKEN=uuid.uuid4().hex)
    # The 30 s are the driver's wait for the cluster; starting Python and importing torch come on top of them.
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import ray, spiketide.cli, spiketide.experiments.reproduce"], env=env,
                   check=True, timeout=300)
    imports = time.monotonic() - start
    for address, message in ((cluster["address"], "RAY_AUTH_MODE=token"), ("127.0.0.1:1", "no Ray cluster answers")):
        start = time.monotonic()
        d = _driver(["fig1", "--scale", "smoke", "--seeds", "0", "--address", address, "--out", "exp"], env, tmp_path)
        _, err = _communicate(d, 300)
        assert time.monotonic() - start < 30 + imports
        assert d.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_killed_local_sweep_leaves_nothing_running_and_a_stale_cluster_file_is_ignored(tmp_path):
    tmp = _short_tmp("st-kill-")
    # What a `ray start --head` whose processes were killed leaves behind: its cluster file, naming a dead GCS.
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    env = _env(tmp)
    argv = ["fig1", "--scale", "smoke", "--seeds", "0", "--workers", "2", "--out", str(tmp_path / "exp"),
            "--no-progress"]
    snapshot = {}
    try:
        d = _driver(argv, env, tmp_path)
        deadline = time.monotonic() + 300
        while not list((tmp_path / "exp" / "runs").glob("*/metrics.jsonl")):  # a trial is training
            assert d.poll() is None and time.monotonic() < deadline, d.communicate()
            time.sleep(0.5)
        procs = _table()
        snapshot = _tree({d.pid}, procs)
        assert any("raylet" in procs[p][2] for p in snapshot)
        assert any(procs[p][2].startswith("ray::_remote_trial") for p in snapshot)
        d.send_signal(signal.SIGKILL)
        d.communicate()
        deadline = time.monotonic() + 30
        while _alive(snapshot) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: _table().get(p, (0, b"", "?"))[2][:60] for p in _alive(snapshot)}
        assert not left, f"still running after the driver was killed: {left}"
        # The rerun starts its own instance beside the stale cluster file and finishes the trial.
        d = _driver(argv, env, tmp_path)
        out, err = _communicate(d, 600)
        assert d.returncode == 0, err
        (run,) = (tmp_path / "exp" / "runs").iterdir()
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1, 2, 3]
    finally:
        _stop({**snapshot, **_ray_processes_under(tmp)})
        shutil.rmtree(tmp, ignore_errors=True)
