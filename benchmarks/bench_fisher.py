#!/usr/bin/env python
"""Speed of `spiketide.fisher.temporal_fisher` against a training step and brute-force loops.

    python benchmarks/bench_fisher.py                                   # convnet, 28x28x1, T=6, N=48
    python benchmarks/bench_fisher.py --model resnet19 --n 64 --T 10    # CIFAR-size resnet19 on CPU
    python benchmarks/bench_fisher.py --model resnet19 --n 1024 --T 10 --device cuda --brute-subset 8

Timed, per LIF setting (the model built with `models.create(..., fast_lif=True/False)`: the compiled LIF
scan or the plain step loop; "on" is timed after a warm-up call that compiles it), as medians of
interleaved repeats:

  train     training steps: forward + backward of the mean-output CE loss in train mode (no
            optimizer step) over the same N samples in batches of --batch-size (default N: one
            step on one batch; otherwise one step is timed and multiplied by ceil(N / batch))
  fisher    temporal_fisher(estimator="empirical") on the N samples (batch size --batch-size,
            default N: one batch); includes its stateless check and safety-net check
  loop      the exact per-sample loop temporal_fisher falls back to (`engine.per_sample_fisher(...,
            exact=True)`): one forward per sample, one backward per horizon
  brute     brute_force_fisher: one sample, one horizon, one forward + one backward at a time

`loop` and `brute` run on --brute-subset samples (default: all N on CPU for convnet, 4 for
bigger models) and are extrapolated linearly to N. Targets: fisher <= 8 x train and
fisher >= 1.5x faster than brute. Times are medians over rounds; ratios are medians of the
per-round ratios. On a loaded machine, `--threads 1` gives steadier numbers (OpenMP threads
that wait for a busy core make many small operations slow). `--exactness` first compares temporal_fisher with
brute_force_fisher in float64 on a tiny convnet on the chosen device (all three estimators).
Prints a table and one JSON line (also to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="convnet", help="built-in model name (default convnet)")
    p.add_argument("--n", type=int, default=48, help="samples (default 48)")
    p.add_argument("--T", type=int, default=6, help="timesteps (default 6)")
    p.add_argument("--image-size", type=int, default=None, help="default 28 for convnet, else 32")
    p.add_argument("--in-channels", type=int, default=None, help="default 1 for convnet, else 3")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=None, help="temporal_fisher batch size (default N)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument("--brute-subset", type=int, default=None,
                   help="samples for the brute-force and per-sample loops (default N for convnet, else 4)")
    p.add_argument("--no-brute", action="store_true", help="skip the brute-force and per-sample loops")
    p.add_argument("--fast-path", default="both", choices=["on", "off", "both"],
                   help="compiled LIF scan on, off, or both (default both)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--exactness", action="store_true", help="float64 check against brute force on a tiny convnet first")
    p.add_argument("--json", default=None, help="also write the JSON result here")
    return p.parse_args(argv)


def exactness(dev) -> dict:
    """max relative error of temporal_fisher against brute_force_fisher, float64, tiny convnet, on `dev`."""
    import torch

    from spiketide.fisher import brute_force_fisher, temporal_fisher
    from spiketide.fisher.measurement import draw_uniforms, true_labels
    from spiketide.losses import horizon_logits
    from spiketide.models import create

    torch.manual_seed(0)
    m = create("convnet", num_classes=5, timesteps=4, in_channels=1, image_size=12, widths=(4, 8, 8)).double().to(dev)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(2.0, 4.0)
            mod.bias.data.uniform_(0.3, 1.0)
    x = torch.rand(10, 1, 12, 12, dtype=torch.float64, device=dev)
    y = torch.randint(0, 5, (10,), device=dev)
    out = {}
    for est in ("empirical", "true", "batch"):
        kw = {}
        if est == "true":
            m.eval()
            with torch.no_grad():
                kw["labels"] = true_labels(horizon_logits(m(x)), draw_uniforms(4, 10, seed=3))
        a = temporal_fisher(m, x, y, estimator=est, batch_size=4, seed=3, per_layer=True)
        b = brute_force_fisher(m, x, y, estimator=est, batch_size=4, seed=3, per_layer=True, **kw)
        errs = [float(((a.trace - b.trace).abs() / b.trace.abs()).max())]
        errs += [float(((a.per_layer[k] - v).abs() / v.abs()).max()) for k, v in b.per_layer.items()]
        out[est] = max(errs)
    print("exactness (float64, max relative error vs brute force):", out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from spiketide import fisher
    from spiketide.fisher import engine
    from spiketide.losses import mean_output_ce
    from spiketide.models import create

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    conv = args.model == "convnet"
    image = args.image_size or (28 if conv else 32)
    cin = args.in_channels or (1 if conv else 3)
    N, T = args.n, args.T
    bs = args.batch_size or N
    sub = min(N, args.brute_subset or (N if conv and dev.type == "cpu" else 4))

    def build(fast: bool):
        """The same weights for both LIF settings; realistic BN statistics from a few train-mode forwards."""
        torch.manual_seed(0)
        net = create(args.model, num_classes=args.num_classes, timesteps=T, in_channels=cin, image_size=image,
                     fast_lif=fast).to(dev)
        net.train()
        with torch.no_grad():
            for _ in range(2):
                net(x[: min(N, 32)])
        return net

    torch.manual_seed(0)
    x = torch.rand(N, cin, image, image, device=dev)
    y = torch.randint(0, args.num_classes, (N,), device=dev)
    model = None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    steps = -(-N // bs)
    xs, ys = x[:bs], y[:bs]

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        mean_output_ce(model(xs), ys).backward()
        model.zero_grad(set_to_none=True)

    def fisher_run():
        fisher.temporal_fisher(model, x, y, batch_size=bs)

    def loop_run():
        engine.per_sample_fisher(model, x[:sub], y[:sub], batch_size=sub, exact=True)

    def brute_run():
        fisher.brute_force_fisher(model, x[:sub], y[:sub])

    exact = exactness(dev) if args.exactness else None
    rows = {}
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.fast_path]
    for fp in modes:
        model = build(fp)
        nparams = sum(p.numel() for p in model.parameters())
        tag = "fast" if fp else "plain"
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_step()
            fisher_run()  # warm-up; compiles the LIF scan when the fast path is on
        warm = time.perf_counter() - t0
        compiled = fp and not any("compiled LIF scan unavailable" in str(w.message) for w in caught)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res = {"train": [], "fisher": [], "loop": [], "brute": []}
        for _ in range(args.repeats):
            res["train"].append(timed(train_step) * steps)
            res["fisher"].append(timed(fisher_run))
            if not args.no_brute:
                res["loop"].append(timed(loop_run) * N / sub)
                res["brute"].append(timed(brute_run) * N / sub)
        med = {k: statistics.median(v) for k, v in res.items() if v}

        def ratio(a, b):  # median of per-round ratios: each round's timings share the machine's load
            return round(statistics.median(x / y for x, y in zip(res[a], res[b])), 3)

        r = {
            "fast_path": compiled,
            "warmup_s": round(warm, 3),
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "fisher_over_train": ratio("fisher", "train"),
        }
        if not args.no_brute:
            r["brute_over_fisher"] = ratio("brute", "fisher")
            r["loop_over_fisher"] = ratio("loop", "fisher")
        if dev.type == "cuda":
            r["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows[tag] = r

    try:
        import resource

        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    except Exception:  # pragma: no cover - non-Unix
        peak_rss = None
    print(f"temporal_fisher benchmark: {args.model} ({nparams:,} params), {cin}x{image}x{image}, T={T}, N={N}, "
          f"batch {bs}, device {args.device}, {torch.get_num_threads()} threads; loops on {sub} samples x {N / sub:g}")
    print(f"{'LIF':6s} {'train s':>9s} {'fisher s':>9s} {'loop s':>9s} {'brute s':>9s} "
          f"{'fisher/train':>13s} {'brute/fisher':>13s} {'loop/fisher':>12s}")
    for tag, r in rows.items():
        print(f"{tag:6s} {r['train_s']:9.3f} {r['fisher_s']:9.3f} {r.get('loop_s', float('nan')):9.3f} "
              f"{r.get('brute_s', float('nan')):9.3f} {r['fisher_over_train']:13.2f} "
              f"{r.get('brute_over_fisher', float('nan')):13.2f} {r.get('loop_over_fisher', float('nan')):12.2f}")
    out = {
        "bench": "fisher", "model": args.model, "params": nparams, "N": N, "T": T, "image": image, "in_channels": cin,
        "batch_size": bs, "loop_samples": sub, "device": args.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
        "peak_rss_gb": None if peak_rss is None else round(peak_rss, 2),
        "targets": {"fisher_over_train_max": 8.0, "brute_over_fisher_min": 1.5},
        "exactness_max_rel_err": exact,
        "results": rows,
    }
    line = json.dumps(out)
    print(line)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
