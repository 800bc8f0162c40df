#!/usr/bin/env python
"""Cost of scheduling trials on Ray, against running the same training runs through `spiketide train`.

    python benchmarks/bench_reproduce.py                 # fig4-lr and fig4-tau at smoke scale, seeds 0,1
    python benchmarks/bench_reproduce.py --json out.json

1. overhead: every distinct trial of the chosen experiments, run one after another with `spiketide train`
   (one process each, as a user would) against `reproduce` with a local Ray instance of 1 worker (Ray start-up
   included). The difference per trial is Ray's overhead.
2. scaling: the same trials with `reproduce --workers 1` and `--workers 2` (1 CPU and 1 torch thread per
   trial): trials per hour and their ratio.

Each variant runs in a fresh folder; the trials are the smoke-scale ones (3 epochs on 60 images), so the
numbers are dominated by fixed costs, which is what this measures. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", default="fig4-lr,fig4-tau")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    from spiketide.experiments.reproduce import plan

    names, seeds = args.experiments.split(","), [int(s) for s in args.seeds.split(",")]
    trials, _ = plan(names, "smoke", seeds)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = [sys.executable, "-m", "spiketide.cli"]
    base = tempfile.mkdtemp(prefix="bench-reproduce-")
    res: dict = {"experiments": names, "seeds": seeds, "trials": len(trials),
                 "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "loadavg_start": os.getloadavg()}}
    try:
        # 1. the same runs through `spiketide train`, one process per run, one after another
        t0 = time.perf_counter()
        for i, t in enumerate(trials.values()):
            c = t.config
            cmd = exe + ["train", "--out", os.path.join(base, "train", str(i)), "--no-progress", "--model", c["model"],
                         "--dataset", c["dataset"], "--subset", str(c["subset"]), "--test-subset", str(c["test_subset"]),
                         "--no-augment", "-T", str(c["timesteps"]), "--tau", str(c["tau"]), "--epochs", str(c["epochs"]),
                         "-b", str(c["batch_size"]), "--lr", str(c["lr"]), "--weight-decay", str(c["weight_decay"]),
                         "--fisher-every", str(c["fisher_every"]), "--fisher-samples", str(c["fisher_samples"]),
                         "--fisher-per-layer", "--seed", str(c["seed"]), "--no-compile", "--device", "cpu",
                         "--checkpoint-epochs", ",".join(map(str, c["checkpoint_epochs"]))]
            subprocess.run(cmd, check=True, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
        res["train_s"] = time.perf_counter() - t0
        # 2. reproduce on Ray with 1 and 2 workers
        for w in (1, 2):
            res[f"ray_{w}_workers_s"] = timed(exe + ["reproduce", *names, "--scale", "smoke", "--seeds", args.seeds,
                                                     "--workers", str(w), "--no-progress",
                                                     "--out", os.path.join(base, f"ray{w}")], env)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = len(trials)
    res["overhead_per_trial_s"] = (res["ray_1_workers_s"] - res["train_s"]) / n
    res["trials_per_hour"] = {w: 3600 * n / res[f"ray_{w}_workers_s"] for w in (1, 2)}
    res["speedup_2_over_1"] = res["ray_1_workers_s"] / res["ray_2_workers_s"]
    res["machine"]["loadavg_end"] = os.getloadavg()
    print(f"{n} smoke trials ({', '.join(names)}; seeds {args.seeds})")
    print(f"  spiketide train, one after another : {res['train_s']:.1f} s")
    print(f"  reproduce, Ray, 1 worker           : {res['ray_1_workers_s']:.1f} s "
          f"(overhead {res['overhead_per_trial_s']:+.2f} s per trial, Ray start included)")
    print(f"  reproduce, Ray, 2 workers          : {res['ray_2_workers_s']:.1f} s")
    print(f"  trials per hour: {res['trials_per_hour'][1]:.0f} (1 worker), {res['trials_per_hour'][2]:.0f} "
          f"(2 workers); ratio {res['speedup_2_over_1']:.2f}")
    line = json.dumps(res)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
