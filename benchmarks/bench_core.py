#!/usr/bin/env python
"""Core speed benchmarks of spiketide: the LIF scan, SNN training steps, a resnet19 epoch.

    python benchmarks/bench_core.py                       # (a) (b) (c) on CPU, full size
    python benchmarks/bench_core.py --quick               # smoke run of every code path, small sizes
    python benchmarks/bench_core.py --device cuda --resnet19-epoch --json out.json

(a) lif     LIF forward+backward on [6, 128, 32, 28, 28] float32: compiled fast path (`LIF`,
            `_FusedLIF`) vs the plain step loop with autograd (`neuron.lif_scan`); spikes must be
            identical and gradients agree to float rounding. Target: fast >= 5x plain.
(b) convnet one training step (B=128, T=6, SGD momentum, mean-output CE) of `convnet` with the
            fast LIF, with the plain-loop LIF, and with ReLU in place of every LIF (the same net on
            the T*B batch: the floor an SNN cannot beat). Target: SNN / ReLU <= 1.5.
(c) resnet19 CIFAR-size (3x32x32, 10 classes) training step, B=16, T=4: images / second.
(d) epoch   (--resnet19-epoch; meant for --device cuda) one resnet19 CIFAR-10-size epoch:
            50,000 random uint8 images on the device, T=10, B=128, bf16 autocast, through
            `spiketide.train.Trainer`'s own epoch loop (`--epoch-loop trainer`, the default) and/or
            a tight loop with the same model, optimizer, augmentation and loss (`tight`).
            `--quick` runs it (both loops) at toy size on any device, so the same code runs on CPU.

Timings are wall-clock medians over interleaved repeats after warm-up (the variants being
compared alternate inside one loop, so machine load hits them alike); ratios are also given as
the median of per-round ratios. Compilation (torch.compile of the LIF scan) is excluded from the
medians and reported separately as `compile_s` (first call minus a steady-state call). By default
the Inductor/Triton caches point at a fresh temporary folder so compile times are cold-start;
`--keep-compile-cache` uses the normal caches instead.

Prints a table, then one JSON line with every result and machine info (also written to --json).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run of every path")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--only", default=None,
                   help="comma list of benchmarks to run: lif,convnet,resnet19,epoch "
                        "(default: lif,convnet,resnet19, plus epoch with --resnet19-epoch or --quick)")
    p.add_argument("--resnet19-epoch", action="store_true", help="(d): time one resnet19 CIFAR-10-size epoch")
    p.add_argument("--epoch-loop", default=None, choices=["trainer", "tight", "both"],
                   help="(d): spiketide.train.Trainer's epoch loop, a tight loop, or both "
                        "(default trainer; both with --quick)")
    p.add_argument("--epoch-images", type=int, default=None, help="(d): images per epoch (default 50000; quick 24)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats for (a) and (b) (default 9; quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPU cores)")
    p.add_argument("--keep-compile-cache", action="store_true",
                   help="use the normal Inductor/Triton caches (default: a fresh temp cache = cold compile)")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler tables for (a) fast path and (b) SNN / ReLU steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", default=None, help="write the JSON results here too")
    return p.parse_args(argv)


ARGS = parse_args()
if not ARGS.keep_compile_cache:  # must happen before torch is imported
    _cache = tempfile.mkdtemp(prefix="spiketide-bench-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_cache, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(_cache, "triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import spiketide  # noqa: E402
from machine import cpu_model, usable_cores  # noqa: E402
from spiketide import data, models, neuron  # noqa: E402
from spiketide.losses import mean_output_ce  # noqa: E402


# ----------------------------------------------------------------------------- helpers

def machine_info(device: torch.device) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "spiketide_version": spiketide.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "gpu": None,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def log(msg: str) -> None:
    """Progress to stderr (the table and JSON go to stdout)."""
    print(f"[bench_core {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def reset_compiled() -> None:
    """Forget compiled LIF graphs so each benchmark compiles (and is timed) on its own."""
    torch._dynamo.reset()
    cache = getattr(neuron, "_compiled", None)
    if isinstance(cache, dict):
        cache.clear()


def interleaved(variants: dict, repeats: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Time each variant `repeats` times; each round runs every variant once, the order rotating."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(timed(variants[n], device))
    return times


def summary(ts: list[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts),
            "samples_s": [round(t, 6) for t in ts]}


def round_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-round ratios (both measured in the same round, so under the same load)."""
    return statistics.median(a / b for a, b in zip(num, den))


def fmt_s(t: float) -> str:
    return f"{t * 1e3:9.1f} ms" if t < 10 else f"{t:9.2f} s "


def print_profile(title: str, fn, device: torch.device, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    sync(device)
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n--- profile: {title} ---")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


# ----------------------------------------------------------------------------- (a) LIF scan

def bench_lif(device: torch.device, quick: bool, repeats: int, profile_it: bool) -> dict:
    shape = (6, 16, 16, 14, 14) if quick else (6, 128, 32, 28, 28)
    tau, vth = 2.0, 1.0
    g = torch.Generator(device="cpu").manual_seed(ARGS.seed)
    x0 = (torch.randn(shape, generator=g) * 2.0).to(device)  # ~ BN output scale: a few % .. 30% firing
    gout = torch.randn(shape, generator=g).to(device)
    reset_compiled()
    lif = neuron.LIF(tau, vth, detach_reset=True, fast=True)

    xf = x0.clone().requires_grad_(True)
    xp = x0.clone().requires_grad_(True)
    res: dict = {"shape": list(shape), "dtype": "float32", "tau": tau, "v_threshold": vth}

    def fast():
        xf.grad = None
        s = lif(xf)
        s.backward(gout)
        return s

    def plain():
        xp.grad = None
        s = neuron.lif_scan(xp, tau, vth, True)
        s.backward(gout)
        return s

    # first call compiles forward and backward; a second, steady-state call gives the compile cost
    t_first = timed(fast, device)
    res["fast_path_active"] = not lif._compile_failed
    t_second = timed(fast, device)
    res["first_call_s"] = t_first
    res["compile_s"] = max(0.0, t_first - t_second)

    # correctness: spikes identical, gradients to float rounding
    s_fast = fast().detach()
    g_fast = xf.grad.detach().clone()
    s_plain = plain().detach()
    g_plain = xp.grad.detach().clone()
    res["spikes_identical"] = bool(torch.equal(s_fast, s_plain))
    res["spike_mismatches"] = int((s_fast != s_plain).sum().item())
    res["firing_rate"] = s_plain.mean().item()
    diff = (g_fast - g_plain).abs()
    gmax = g_plain.abs().max().clamp_min(1e-30)
    res["grad_max_abs_diff"] = diff.max().item()
    res["grad_max_rel_diff"] = (diff.max() / gmax).item()  # relative to the largest gradient
    big = g_plain.abs() > 1e-3 * gmax  # elementwise, where the gradient is not ~0
    res["grad_max_elementwise_rel_diff"] = (diff[big] / g_plain.abs()[big]).max().item() if big.any() else 0.0
    del s_fast, s_plain, g_fast, g_plain, diff, big

    times = interleaved({"fast": fast, "plain": plain}, repeats, device, warmup=1)
    res["fast"] = summary(times["fast"])
    res["plain"] = summary(times["plain"])
    res["speedup"] = res["plain"]["median_s"] / res["fast"]["median_s"]
    res["speedup_per_round"] = round_ratio(times["plain"], times["fast"])
    res["target_speedup"] = 5.0
    res["target_met"] = None if quick else res["speedup"] >= 5.0  # targets are for the full sizes
    if profile_it:
        print_profile("(a) LIF fast path fwd+bwd", fast, device)
        print_profile("(a) LIF plain step loop fwd+bwd", plain, device)
    return res


# ----------------------------------------------------------------------------- (b) convnet step

class ReLUInPlaceOfLIF(nn.Module):
    """Stateless stand-in for a LIF module: relu on [T, B, ...] == relu on the folded T*B batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


def replace_lif(model: nn.Module, make) -> int:
    """Replace every neuron.LIF child (recursively) by make(lif); returns how many were replaced."""
    n = 0
    for name, child in list(model.named_children()):
        if isinstance(child, neuron.LIF):
            setattr(model, name, make(child))
            n += 1
        else:
            n += replace_lif(child, make)
    return n


def fast_active(model: nn.Module) -> bool:
    """Every LIF of the model asked for the compiled scan and none fell back to the step loop."""
    return all(m.fast and not m._compile_failed for m in model.modules() if isinstance(m, neuron.LIF))


def set_lif_fast(model: nn.Module, fast: bool) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, neuron.LIF):
            m.fast = fast
            n += 1
    return n


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool = False):
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = mean_output_ce(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def random_batch(b: int, c: int, size: int, classes: int, device: torch.device, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = data.to_float(torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=g)).to(device)
    y = torch.randint(0, classes, (b,), generator=g).to(device)
    return x, y


def bench_convnet(device: torch.device, quick: bool, repeats: int, profile_it: bool) -> dict:
    B, T = (16, 4) if quick else (128, 6)
    reset_compiled()
    torch.manual_seed(ARGS.seed)
    snn = models.create("convnet", num_classes=10, timesteps=T, in_channels=1, image_size=28, fast_lif=True).to(device).train()
    plain = copy.deepcopy(snn)
    n_lif = set_lif_fast(plain, False)
    relu = copy.deepcopy(snn)
    replace_lif(relu, lambda lif: ReLUInPlaceOfLIF())
    assert not any(isinstance(m, neuron.LIF) for m in relu.modules())
    x, y = random_batch(B, 1, 28, 10, device, ARGS.seed)
    steps = {"snn_fast": make_step(snn, sgd(snn), x, y),
             "snn_plain": make_step(plain, sgd(plain), x, y),
             "relu": make_step(relu, sgd(relu), x, y)}
    res: dict = {"batch": B, "timesteps": T, "lif_modules": n_lif,
                 "params": sum(p.numel() for p in snn.parameters())}
    t_first = timed(steps["snn_fast"], device)
    res["fast_path_active"] = fast_active(snn)
    t_second = timed(steps["snn_fast"], device)
    res["snn_fast_first_step_s"] = t_first
    res["compile_s"] = max(0.0, t_first - t_second)

    times = interleaved(steps, repeats, device, warmup=1)
    for k, v in times.items():
        res[k] = summary(v)
    res["ratio_snn_fast_over_relu"] = res["snn_fast"]["median_s"] / res["relu"]["median_s"]
    res["ratio_snn_fast_over_relu_per_round"] = round_ratio(times["snn_fast"], times["relu"])
    res["ratio_snn_plain_over_relu"] = res["snn_plain"]["median_s"] / res["relu"]["median_s"]
    res["ratio_snn_plain_over_relu_per_round"] = round_ratio(times["snn_plain"], times["relu"])
    res["target_ratio"] = 1.5
    res["target_met"] = None if quick else res["ratio_snn_fast_over_relu"] <= 1.5
    if profile_it:
        print_profile("(b) convnet SNN (fast LIF) training step", steps["snn_fast"], device)
        print_profile("(b) convnet ReLU training step", steps["relu"], device)
    return res


# ----------------------------------------------------------------------------- (c) resnet19 throughput

def bench_resnet19(device: torch.device, quick: bool) -> dict:
    B, T, repeats = (2, 2, 1) if quick else (16, 4, 3)
    reset_compiled()
    torch.manual_seed(ARGS.seed)
    model = models.create("resnet19", num_classes=10, timesteps=T, in_channels=3, image_size=32, fast_lif=True).to(device).train()
    x, y = random_batch(B, 3, 32, 10, device, ARGS.seed)
    step = make_step(model, sgd(model), x, y)
    t_first = timed(step, device)  # compiles every LIF shape
    times = [timed(step, device) for _ in range(repeats + 1)][1:]  # one more warm-up step
    med = statistics.median(times)
    return {"batch": B, "timesteps": T, "fast_path_active": fast_active(model),
            "params": sum(p.numel() for p in model.parameters()),
            "first_step_s": t_first, "compile_s": max(0.0, t_first - med), "step": summary(times),
            "images_per_s": B / med, "image_timesteps_per_s": B * T / med}


# ----------------------------------------------------------------------------- (d) resnet19 epoch

def bench_epoch(device: torch.device, quick: bool, loop: str) -> dict:
    """One CIFAR-10-size resnet19 epoch on random uint8 images held on the device."""
    from spiketide.runs import RunDir
    from spiketide.train import TrainConfig, Trainer

    if quick:
        n, T, B = ARGS.epoch_images or 24, 2, 8
    else:
        n, T, B = ARGS.epoch_images or 50_000, 10, 128
    amp = device.type == "cuda"  # bf16 autocast as in spiketide.train (CUDA only)
    reset_compiled()
    torch.manual_seed(ARGS.seed)
    g = torch.Generator(device="cpu").manual_seed(ARGS.seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (n,), generator=g).to(device)
    train_set = data.ImageSet(images, labels, "cifar10", 10)
    test_set = data.ImageSet(images[:B], labels[:B], "cifar10", 10)
    rem = n % B
    # warm-up set: one full batch and one batch of the epoch's last size -> every shape compiled
    warm = data.ImageSet(images[: B + (rem or B)], labels[: B + (rem or B)], "cifar10", 10)
    steps = math.ceil(n / B)
    res: dict = {"images": n, "timesteps": T, "batch": B, "steps": steps, "amp_bf16": amp,
                 "last_batch": rem or B}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loops = ["trainer", "tight"] if loop == "both" else [loop]
    tmp = tempfile.mkdtemp(prefix="spiketide-bench-run-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)

    for which in loops:
        model = models.create("resnet19", num_classes=10, timesteps=T, in_channels=3, image_size=32, fast_lif=True).to(device)
        if which == "trainer":
            config = TrainConfig(model="resnet19", dataset="cifar10", timesteps=T, batch_size=B, epochs=1,
                                 lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant", device=str(device),
                                 amp=True, fast_lif=True, augment=True, progress=False,
                                 out=os.path.join(tmp, "run"), seed=ARGS.seed)
            trainer = Trainer(config, model=model, train_set=warm, test_set=test_set,
                              run_dir=RunDir(config.out))
            from tqdm.auto import tqdm

            bar = tqdm(total=0, disable=True)
            trainer.epoch = 1
            t0 = time.perf_counter()
            trainer._train_epoch(bar)  # warm-up: compiles both batch shapes, creates momentum buffers
            sync(device)
            t_warm = time.perf_counter() - t0
            log(f"(d) trainer loop: warm-up {t_warm:.1f} s; timing {steps} steps ...")
            trainer.train_set = train_set
            sync(device)
            t0 = time.perf_counter()
            record = trainer._train_epoch(bar)
            sync(device)
            secs = time.perf_counter() - t0
            extra = {"trainer_reported_s": record["seconds"], "train_loss": record["train_loss"]}
        else:
            model.train()
            opt = sgd(model)
            gen = torch.Generator(device="cpu").manual_seed(ARGS.seed + 1)

            def epoch(ds):
                loss = None
                for xb, yb in data.batches(ds.images, ds.labels, B, shuffle=True, generator=gen):
                    x = data.augment(xb, "cifar10", generator=gen)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        out = model(x)
                    loss = mean_output_ce(out, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                return loss

            t_warm = timed(lambda: epoch(warm), device)
            log(f"(d) tight loop: warm-up {t_warm:.1f} s; timing {steps} steps ...")
            sync(device)
            t0 = time.perf_counter()
            last = epoch(train_set)
            sync(device)
            secs = time.perf_counter() - t0
            extra = {"last_loss": float(last.item())}
        log(f"(d) {which} loop: epoch {secs:.1f} s")
        res[which] = {"epoch_s": secs, "images_per_s": n / secs, "step_s": secs / steps,
                      "warmup_s": t_warm, "fast_path_active": fast_active(model), **extra}
        del model
        reset_compiled()
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


# ----------------------------------------------------------------------------- main

def verdict(met) -> str:
    return "n/a at --quick sizes" if met is None else ("MET" if met else "MISSED")


def print_table(results: dict) -> None:
    line = "-" * 78
    print(line)
    print(f"spiketide core benchmarks  |  {results['machine']['cpu_model']}  |  "
          f"{results['machine']['torch_threads']} threads  |  torch {results['machine']['torch_version']}"
          + (f"  |  {results['machine']['gpu']}" if results['machine'].get('gpu') else ""))
    print(f"device {results['machine']['device']}{'  (QUICK smoke run)' if results['quick'] else ''}")
    print(line)
    a = results.get("lif")
    if a:
        print(f"(a) LIF fwd+bwd {a['shape']} float32   [median of {a['fast']['n']}]")
        print(f"    fast path (compiled)    {fmt_s(a['fast']['median_s'])}   compile {a['compile_s']:.1f} s"
              f"   active={a['fast_path_active']}")
        print(f"    plain loop + autograd   {fmt_s(a['plain']['median_s'])}")
        print(f"    speedup                 {a['speedup']:9.2f} x   (per-round median {a['speedup_per_round']:.2f} x;"
              f" target >= 5: {verdict(a['target_met'])})")
        print(f"    spikes identical        {a['spikes_identical']}  (firing rate {a['firing_rate']:.3f})")
        print(f"    grad max rel diff       {a['grad_max_rel_diff']:.2e} of max|grad|"
              f"  (elementwise {a['grad_max_elementwise_rel_diff']:.2e})")
    b = results.get("convnet")
    if b:
        print(f"(b) convnet training step B={b['batch']} T={b['timesteps']}   [median of {b['relu']['n']}, interleaved]")
        for k, label in (("snn_fast", "SNN, fast LIF"), ("snn_plain", "SNN, plain-loop LIF"), ("relu", "ReLU floor")):
            print(f"    {label:23s} {fmt_s(b[k]['median_s'])}")
        print(f"    SNN fast / ReLU         {b['ratio_snn_fast_over_relu']:9.2f}     (per-round "
              f"{b['ratio_snn_fast_over_relu_per_round']:.2f}; target <= 1.5: {verdict(b['target_met'])})")
        print(f"    SNN plain / ReLU        {b['ratio_snn_plain_over_relu']:9.2f}     (per-round "
              f"{b['ratio_snn_plain_over_relu_per_round']:.2f})")
        print(f"    compile (first step)    {b['compile_s']:9.1f} s")
    c = results.get("resnet19")
    if c:
        print(f"(c) resnet19 3x32x32 training step B={c['batch']} T={c['timesteps']}   [median of {c['step']['n']}]")
        print(f"    step                    {fmt_s(c['step']['median_s'])}   compile {c['compile_s']:.1f} s")
        print(f"    throughput              {c['images_per_s']:9.2f} images/s")
    d = results.get("epoch")
    if d:
        print(f"(d) resnet19 epoch: {d['images']} images T={d['timesteps']} B={d['batch']} bf16={d['amp_bf16']}")
        for which in ("trainer", "tight"):
            if which in d:
                r = d[which]
                print(f"    {which + ' loop':23s} {fmt_s(r['epoch_s'])}   {r['images_per_s']:.0f} images/s,"
                      f" {r['step_s'] * 1e3:.1f} ms/step (warm-up {r['warmup_s']:.1f} s)")
        if "peak_memory_gib" in d:
            print(f"    peak GPU memory         {d['peak_memory_gib']:9.2f} GiB")
    print(line)


def main() -> int:
    args = ARGS
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    torch.set_num_threads(args.threads or usable_cores())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    repeats = args.repeats or (3 if args.quick else 9)
    if args.only:
        todo = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = set(todo) - {"lif", "convnet", "resnet19", "epoch"}
        if bad:
            print(f"--only: unknown benchmark(s) {sorted(bad)}", file=sys.stderr)
            return 2
    else:
        todo = ["lif", "convnet", "resnet19"] + (["epoch"] if (args.resnet19_epoch or args.quick) else [])

    results: dict = {"benchmark": "spiketide.bench_core", "quick": args.quick, "repeats": repeats,
                     "cold_compile_cache": not args.keep_compile_cache, "machine": machine_info(device)}
    t_all = time.perf_counter()
    if "lif" in todo:
        log("(a) LIF scan ...")
        results["lif"] = bench_lif(device, args.quick, repeats, args.profile)
    if "convnet" in todo:
        log("(b) convnet training step ...")
        results["convnet"] = bench_convnet(device, args.quick, repeats, args.profile)
    if "resnet19" in todo:
        log("(c) resnet19 training step ...")
        results["resnet19"] = bench_resnet19(device, args.quick)
    if "epoch" in todo:
        log("(d) resnet19 epoch ...")
        loop = args.epoch_loop or ("both" if args.quick else "trainer")
        results["epoch"] = bench_epoch(device, args.quick, loop)
    results["total_s"] = time.perf_counter() - t_all
    if hasattr(os, "getloadavg"):
        results["machine"]["loadavg_end"] = list(os.getloadavg())
    print_table(results)
    line = json.dumps(results)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
