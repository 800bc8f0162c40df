#!/usr/bin/env python
"""Where one CPU-scale reproduction trial spends its wall time (issue 18, item 1: measure first).

    python benchmarks/bench_trials.py                          # every kind at CPU scale (~30 min on 2 cores)
    python benchmarks/bench_trials.py --kinds base,resnet19    # some kinds
    python benchmarks/bench_trials.py --quick                  # smoke scale: a sanity run of the code paths
    python benchmarks/bench_trials.py --json out.json
    python benchmarks/bench_trials.py --kinds base,vgg16 --src /tmp/old/src src   # two source trees, interleaved

One trial of each kind, seed 0, from the suite `spiketide reproduce all --scale cpu` runs (`reproduce.plan`):
base convnet (fig1/fig2/table1's cross-entropy run, with deficits and robustness), ResNet19, ResNet34 and AlexNet
at 1/16 width (fig4-arch), VGG16 with pruning (fig7). Each trial runs through `trials.run_trial(trial, root,
threads=1)` (what a Ray worker calls, one torch thread, OMP_NUM_THREADS=1) into a fresh temporary root, in a
fresh Python process of its own: imports and compilation are cold in-process, as in the first trial a Ray
worker runs (Inductor's on-disk cache is whatever this machine has, unless --cold-cache).

Time is split by wrapping spiketide's functions with timers inside that process only (nothing in src/ changes).
The timers nest; each moment is charged to the innermost one, and the `torch._dynamo` compile callbacks open
a "compile" timer wherever a compilation happens (it is charged there, never to the code that triggered it).
The parts:
  start-up   interpreter start and imports (spawn -> imports done), data loading, model building, the rest
             of the Trainer's construction;
  compile    torch.compile of the LIF scan (every compilation: first use, and each new T in pruning);
  train      Trainer._train_epoch (forward, backward, optimizer step, per-step book-keeping);
  fisher     callbacks.FisherTracker.measure (temporal_fisher at the measured epochs);
  eval       Trainer.evaluate (test accuracy at epoch 0, every eval_every and the last epoch);
  write      checkpoints (Trainer.save: last.pt every epoch, epoch_N.pt when asked), metrics.jsonl,
             config.json, analysis JSON/Markdown and figures (analyses.write, plots.save, pruning's writes);
  robustness / deficits / prune
             each analysis (trials.ANALYSES[name]) as a whole, minus any compilation inside it: its data and
             checkpoint loading, its own computation, and for pruning the retraining, its evaluation and the
             round checkpoints. The JSON splits each one further (`inside_analyses`);
  other      the rest of run_trial (run-directory checks and lock, trial.log redirection, reading results).
`--src A B ...` runs each kind once per source tree (PYTHONPATH; e.g. an older commit's `src/` beside this one),
the trees' order alternating from kind to kind so that a busy machine slows them alike, and adds trials per hour
per tree (3600 x trials / their summed wall time) to the table.
Prints a table (seconds and % of each trial's wall time) and one JSON line with every number and machine info.
"""

from __future__ import annotations

import time

_T_PROCESS = time.time()  # before any heavy import: the child's own start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402

from machine import cpu_model, usable_cores  # noqa: E402

# kind -> (experiment, label) candidates in the suite's plan, first found wins (smoke scale lacks some)
KINDS = {
    "base": [("fig1", "base")],
    "resnet19": [("fig4-arch", "resnet19"), ("fig7", "resnet19")],
    "resnet34": [("fig4-arch", "resnet34")],
    "vgg16": [("fig7", "vgg16")],
    "alexnet": [("fig4-arch", "alexnet")],
}
PARTS = ["startup", "compile", "train", "fisher", "eval", "robustness", "deficits", "prune", "write", "other"]
HEAD = {"startup": "start-up", "compile": "compile", "train": "train steps", "fisher": "Fisher", "eval": "eval",
        "robustness": "robustness", "deficits": "deficits", "prune": "pruning", "write": "file writing",
        "other": "other"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from {','.join(KINDS)}")
    p.add_argument("--quick", action="store_true", help="smoke scale (seconds per trial): a sanity run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the JSON line here")
    p.add_argument("--cold-cache", action="store_true",
                   help="point Inductor's caches to a fresh temporary folder per trial (cold compilation)")
    p.add_argument("--src", nargs="+", default=None,
                   help="source trees to compare (default: the installed spiketide), interleaved per kind")
    p.add_argument("--keep", action="store_true", help="keep the temporary run roots (their paths are printed)")
    # internal: one trial in this process
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kinds {bad}; choose from {', '.join(KINDS)}")
    return args


def pick_trial(kind: str, scale: str, seed: int):
    """The suite's trial of this kind (its config and the analyses every experiment asks of it)."""
    from spiketide.experiments.reproduce import plan

    trials, specs = plan(["all"], scale, [seed])
    for exp, label in KINDS[kind]:
        tid = specs.get(exp, {}).get("runs", {}).get(str(seed), {}).get(label)
        if tid is not None:
            return exp, label, trials[tid]
    raise SystemExit(f"no {kind} trial in the {scale}-scale suite")


# -- the child: one trial, timed ---------------------------------------------------------------------------------

class Clock:
    """Nested timers: every moment is charged to the innermost open one, under the innermost open context
    (the trial itself, or an analysis)."""

    def __init__(self):
        self.stack = [("trial", "other")]
        self.last = time.perf_counter()
        self.acc: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)

    def _flush(self) -> None:
        now = time.perf_counter()
        self.acc[self.stack[-1]] += now - self.last
        self.last = now

    def push(self, category: str, context: str | None = None) -> None:
        self._flush()
        frame = (context or self.stack[-1][0], category)
        self.stack.append(frame)
        self.calls[frame] += 1

    def pop(self) -> None:
        self._flush()
        self.stack.pop()


def _wrap(clock: Clock, owner, attr: str, category: str, context: str | None = None) -> None:
    original = getattr(owner, attr) if not isinstance(owner, dict) else owner[attr]

    def timed(*a, **k):
        clock.push(category, context)
        try:
            return original(*a, **k)
        finally:
            clock.pop()

    timed.__wrapped__ = original
    if isinstance(owner, dict):
        owner[attr] = timed
    else:
        setattr(owner, attr, timed)


def install(clock: Clock) -> None:
    """Wrap the functions a trial spends its time in (this process only)."""
    import torch._dynamo

    from spiketide import data, plots, runs, train
    from spiketide.callbacks import FisherTracker
    from spiketide.experiments import analyses, pruning, trials

    _wrap(clock, data, "load", "setup")                  # datasets (Trainer, analyses, pruning)
    _wrap(clock, train.Trainer, "__init__", "setup")     # data, model, optimizer
    _wrap(clock, analyses, "load_model", "setup")        # checkpoints read by robustness and deficits
    _wrap(clock, pruning, "load_model", "setup")
    _wrap(clock, train.Trainer, "_train_epoch", "train")
    _wrap(clock, train.Trainer, "evaluate", "eval")
    _wrap(clock, pruning, "_accuracy_at", "eval")
    _wrap(clock, FisherTracker, "measure", "fisher")
    _wrap(clock, pruning, "_measure_fisher", "fisher")
    _wrap(clock, train.Trainer, "save", "write")
    for name in ("create", "append_metrics", "write_metrics"):
        _wrap(clock, runs.RunDir, name, "write")
    _wrap(clock, analyses, "write", "write")
    _wrap(clock, plots, "save", "write")
    _wrap(clock, pruning, "atomic_write_json", "write")
    _wrap(clock, pruning, "atomic_write_text", "write")
    for name in list(trials.ANALYSES):
        _wrap(clock, trials.ANALYSES, name, "own", context=name)
    # every compilation, wherever it happens (the first forward is in the epoch-0 evaluation)
    torch._dynamo.callback_handler.register_start_callback(lambda *a: clock.push("compile"))
    torch._dynamo.callback_handler.register_end_callback(lambda *a: clock.pop())


def child(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_imports = time.perf_counter()
    import torch

    import spiketide.experiments.reproduce  # noqa: F401 - what a Ray worker imports to run a trial
    from spiketide.experiments.trials import RunResult, run_trial

    imports_s = time.perf_counter() - t_imports
    interpreter_s = _T_PROCESS - args.spawned_at if args.spawned_at else 0.0
    scale = "smoke" if args.quick else "cpu"
    exp, label, trial = pick_trial(args.child, scale, args.seed)
    clock = Clock()
    install(clock)
    start = time.perf_counter()
    clock.last = start
    summary = run_trial(trial, args.root, threads=1)
    clock._flush()
    trial_s = time.perf_counter() - start
    metrics = RunResult(trial.run_dir(args.root)).metrics
    acc = {f"{ctx}/{cat}": s for (ctx, cat), s in clock.acc.items()}
    calls = {f"{ctx}/{cat}": n for (ctx, cat), n in clock.calls.items()}
    out = {"kind": args.child, "experiment": exp, "label": label, "trial": trial.id, "config": trial.config,
           "analyses": trial.analyses, "interpreter_s": interpreter_s, "imports_s": imports_s, "trial_s": trial_s,
           "timers_s": acc, "calls": calls, "summary": summary, "torch_threads": torch.get_num_threads(),
           "epoch_seconds_recorded": sum(r.get("seconds") or 0 for r in metrics),
           "files_bytes": sum(p.stat().st_size for p in trial.run_dir(args.root).rglob("*") if p.is_file()),
           "files": sum(1 for p in trial.run_dir(args.root).rglob("*") if p.is_file())}
    with open(args.result, "w") as f:
        json.dump(out, f)


# -- the parent: one child per trial, then the table ----------------------------------------------------------------

def parts(res: dict) -> dict:
    """Seconds of each part of one trial's wall time (the parts of the module docstring)."""
    t = res["timers_s"]
    by = defaultdict(float)
    inside: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for key, s in t.items():
        ctx, cat = key.split("/")
        if cat == "compile":
            by["compile"] += s
        elif ctx != "trial":
            by[ctx] += s
            inside[ctx][cat] += s
        elif cat == "setup":
            by["startup"] += s
        else:
            by[cat] += s
    by["startup"] += res["interpreter_s"] + res["imports_s"]
    total = res["interpreter_s"] + res["imports_s"] + res["trial_s"]
    return {"total_s": total, "parts_s": {p: by.get(p, 0.0) for p in PARTS},
            "inside_analyses_s": {k: dict(v) for k, v in inside.items()}}


def table(rows: list[dict]) -> str:
    lines = ["| trial | total s | " + " | ".join(HEAD[p] for p in PARTS) + " |",
             "|---|---:|" + "---:|" * len(PARTS)]
    for r in rows:
        cells = []
        for p in PARTS:
            s = r["parts_s"][p]
            cells.append("–" if s < 0.005 else f"{s:.1f} ({100 * s / r['total_s']:.0f} %)")
        lines.append(f"| {r['kind']} ({r['label_text']}) | {r['total_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inside_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for name, cats in r["inside_analyses_s"].items():
            split = ", ".join(f"{c} {s:.1f}" for c, s in sorted(cats.items(), key=lambda kv: -kv[1]) if s >= 0.05)
            out.append(f"  {r['kind']} / {name}: {split} s")
    return "\n".join(out)


def label_text(res: dict) -> str:
    c = res["config"]
    bits = [f"{res['experiment']}", f"w={c['width']:g}", f"T={c['timesteps']}", f"{c['epochs']} ep",
            f"Fisher every {c['fisher_every']}" if c["fisher_every"] else "no Fisher"]
    if not c.get("fast_lif", True):
        bits.append("plain LIF")
    return ", ".join(bits)


def _tree(src: str) -> str:
    return "/".join(src.rstrip("/").split("/")[-2:])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    import torch

    machine = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
               "torch_version": torch.__version__, "torch_threads_per_trial": 1, "python": sys.version.split()[0],
               "platform": platform.platform(), "loadavg_start": list(os.getloadavg()),
               "scale": "smoke" if args.quick else "cpu", "seed": args.seed, "cold_cache": args.cold_cache}
    print(f"bench_trials | {machine['cpu_model']} | {machine['usable_cores']} cores | torch {torch.__version__} | "
          f"load {machine['loadavg_start'][0]:.2f} | {machine['scale']} scale | kinds {','.join(args.kinds)}",
          flush=True)
    rows = []
    start = time.perf_counter()
    srcs = [os.path.abspath(x) for x in args.src] if args.src else [None]
    runs = [(kind, src) for i, kind in enumerate(args.kinds) for src in (srcs if i % 2 == 0 else srcs[::-1])]
    for kind, src in runs:
        root = tempfile.mkdtemp(prefix=f"bench-trials-{kind}-")
        result = os.path.join(root, "result.json")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if src:
            env["PYTHONPATH"] = src
        if args.cold_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor-cache")
            env["TRITON_CACHE_DIR"] = os.path.join(root, "triton-cache")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--root", os.path.join(root, "out"),
               "--result", result, "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + ["--spawned-at", repr(time.time())], env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            log = next(iter(__import__("pathlib").Path(root, "out").rglob("trial.log")), None)
            print(f"{kind}: FAILED (exit {proc.returncode}; log {log}; root kept)", flush=True)
            continue
        with open(result) as f:
            res = json.load(f)
        res.update(parts(res), label_text=label_text(res) + (f" [{_tree(src)}]" if src else ""), src=src,
                   process_wall_s=wall, loadavg_before=list(load0), loadavg_after=list(os.getloadavg()))
        res["unaccounted_s"] = res["total_s"] - sum(res["parts_s"].values())
        rows.append(res)
        print(f"{kind}{f' [{_tree(src)}]' if src else ''}: {res['total_s']:.1f} s (process {wall:.1f} s), load "
              f"{load0[0]:.2f} -> {res['loadavg_after'][0]:.2f}", flush=True)
        if args.keep:
            print(f"  kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["bench_wall_s"] = time.perf_counter() - start
    print()
    print(table(rows))
    if any(r["inside_analyses_s"] for r in rows):
        print("\ninside the analyses (s, compilation excluded):")
        print(inside_table(rows))
    out = {"machine": machine, "trials": rows}
    if args.src:
        out["trials_per_hour"] = {}
        for src in srcs:
            mine = [r for r in rows if r["src"] == src]
            if mine:
                out["trials_per_hour"][src] = 3600 * len(mine) / sum(r["total_s"] for r in mine)
                print(f"\n{_tree(src)}: {len(mine)} trials, {sum(r['total_s'] for r in mine):.0f} s, "
                      f"{out['trials_per_hour'][src]:.1f} trials per hour", end="")
        print()
    line = json.dumps(out)
    print("\n" + line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
