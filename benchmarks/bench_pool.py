#!/usr/bin/env python
"""The models' 2x2 average pool: `nn.AvgPool2d(2)` against spiketide's compiled `models.base.AvgPool2d`.

    python benchmarks/bench_pool.py [--repeats 30] [--json out.json]

(a) forward and backward of one pool on the pool inputs of the CPU-scale convnet (width 1/2) and of VGG16/AlexNet
    at 1/16 width, T = 6 (T = 5 for VGG16), batch 25, folded to [T*B, C, H, W]: spikes with about 20 % ones,
    a fixed random upstream gradient. Outputs and input gradients must be bit-identical.
(b) one training step of the CPU-scale base run (`convnet`, width 1/2, T = 6, batch 25, SGD as configured by the
    suite) with the compiled pool and with `nn.AvgPool2d`, two copies of the same weights, interleaved.

One torch thread (what a reproduction trial uses), medians of interleaved repeats after warm-up; compilation is
outside the medians. Prints a table and one JSON line with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from machine import cpu_model, usable_cores

SHAPES = {"convnet pool 1 (16 ch, 28x28)": (150, 16, 28, 28), "convnet pool 2 (32 ch, 14x14)": (150, 32, 14, 14),
          "alexnet pool 1 (6 ch, 28x28)": (150, 6, 28, 28), "vgg16 pool 1 (4 ch, 28x28)": (125, 4, 28, 28)}


def _median_ms(ts: list[float]) -> float:
    return 1000 * statistics.median(ts)


def bench_pool(repeats: int) -> dict:
    from spiketide.models.base import AvgPool2d

    out = {}
    fast, plain = AvgPool2d(fast=True), nn.AvgPool2d(2)
    for name, shape in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(shape, generator=g) < 0.2).float()
        grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)
        results = {}
        for label, pool in (("nn.AvgPool2d", plain), ("compiled", fast)):
            xi = x.clone().requires_grad_()
            y = pool(xi)
            y.backward(grad)
            results[label] = (y, xi.grad)
        identical = all(torch.equal(a, b) for a, b in zip(results["nn.AvgPool2d"], results["compiled"]))
        times = {(k, part): [] for k in ("nn.AvgPool2d", "compiled") for part in ("fwd", "bwd")}
        for r in range(repeats):
            for label, pool in ((("nn.AvgPool2d", plain), ("compiled", fast)) if r % 2 == 0
                                else (("compiled", fast), ("nn.AvgPool2d", plain))):
                xi = x.clone().requires_grad_()
                t0 = time.perf_counter()
                y = pool(xi)
                t1 = time.perf_counter()
                y.backward(grad)
                t2 = time.perf_counter()
                times[(label, "fwd")].append(t1 - t0)
                times[(label, "bwd")].append(t2 - t1)
        out[name] = {"shape": list(shape), "bit_identical": identical,
                     **{f"{k}_{part}_ms": _median_ms(v) for (k, part), v in times.items()}}
    return out


def bench_step(repeats: int) -> dict:
    import tempfile

    from spiketide import data
    from spiketide.config import TrainConfig
    from spiketide.experiments.reproduce import plan
    from spiketide.losses import batch_mean
    from spiketide.train import Trainer

    trials, _ = plan(["fig1"], "cpu", [0])
    config = TrainConfig.from_dict({**next(iter(trials.values())).config, "out": tempfile.mkdtemp() + "/run",
                                    "progress": False, "device": "cpu"})
    copies = {}
    for label in ("nn.AvgPool2d", "compiled"):
        trainer = Trainer(config)
        trainer.model.pool.fast = label == "compiled"
        copies[label] = trainer
    images, labels = copies["compiled"].train_set.images, copies["compiled"].train_set.labels

    def step(trainer, i):
        x, y = data.to_float(images[25 * i:25 * (i + 1)]), labels[25 * i:25 * (i + 1)]
        loss = trainer.loss_fn(trainer.net(x), y, batch_mean)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    for trainer in copies.values():
        for i in range(3):
            step(trainer, i)
    times = {k: [] for k in copies}
    for r in range(repeats):
        for label in (list(copies) if r % 2 == 0 else list(copies)[::-1]):
            t0 = time.perf_counter()
            step(copies[label], r % 20)
            times[label].append(time.perf_counter() - t0)
    med = {k: _median_ms(v) for k, v in times.items()}
    same = all(torch.equal(a, b) for a, b in zip(copies["nn.AvgPool2d"].model.state_dict().values(),
                                                  copies["compiled"].model.state_dict().values()))
    return {"step_ms": med, "speedup": med["nn.AvgPool2d"] / med["compiled"], "weights_identical_after": same}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    machine = {"cpu_model": cpu_model(), "usable_cores": usable_cores(), "torch": torch.__version__,
               "python": platform.python_version(), "threads": 1, "loadavg_start": list(os.getloadavg())}
    pools = bench_pool(args.repeats)
    step = bench_step(args.repeats)
    machine["loadavg_end"] = list(os.getloadavg())
    print(f"bench_pool | {machine['cpu_model']} | 1 thread | torch {machine['torch']}")
    print(f"{'pool input [T*B, C, H, W]':36}{'nn fwd':>9}{'ours fwd':>10}{'nn bwd':>9}{'ours bwd':>10}  identical")
    for name, r in pools.items():
        print(f"{name:36}{r['nn.AvgPool2d_fwd_ms']:>9.2f}{r['compiled_fwd_ms']:>10.2f}{r['nn.AvgPool2d_bwd_ms']:>9.2f}"
              f"{r['compiled_bwd_ms']:>10.2f}  {r['bit_identical']}")
    print(f"base convnet training step: {step['step_ms']['nn.AvgPool2d']:.1f} ms -> {step['step_ms']['compiled']:.1f} ms "
          f"({step['speedup']:.2f}x), weights identical after the steps: {step['weights_identical_after']}")
    line = json.dumps({"machine": machine, "pools": pools, "step": step, "repeats": args.repeats})
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
