"""Robustness of SNNs to noise, blur and adversarial attacks (Table 1 of the paper).

Table 1 reports, for each model, clean accuracy and the accuracy (and drop w.r.t. clean) under

* Gaussian noise whose l2 norm is 50% of the input's l2 norm,
* blur: bilinear downsampling by 2 (32x32 -> 16x16) and bilinear upsampling back,
* FGSM with eps = 8/255 (single signed-gradient step),
* l-inf PGD with eps = 8/255, step alpha = 4/255, n = 10 iterations.

The corruptions and attacks are small pure functions of a batch. Every dataset-level result is one
accuracy pass (`evaluation.accuracy`) per named perturbation `(x, y) -> x'`. A 5-D input is always
read as per-timestep `[T, B, C, H, W]`. Budgets are in pixel space (models normalise inputs
themselves); gradients flow through the surrogate spike function (BPTT), so attacks are plain autograd.

Beyond the paper: attacks take `timesteps` (0-based) to perturb only some timesteps (the Discussion
suggests the early, information-rich ones are the vulnerable ones), an eps sweep with a
gradient-masking check, a first-k vs last-k windowed attack report, and Fig. 2's time-window deficits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spiketide import evaluation, progress as progress_bar
from spiketide.errors import ConfigError
from spiketide.tables import markdown_table

__all__ = [
    "predict", "gaussian_noise", "blur", "windowed_input", "fgsm", "pgd", "evaluate", "eps_sweep",
    "time_window_deficits", "check_gradient_masking", "windowed_attack_report", "to_markdown", "to_markdown_table",
    "DEFAULT_EPS_LIST",
]

DEFAULT_EPS_LIST: tuple[float, ...] = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)

Perturbation = Callable[[Tensor, Tensor], Tensor]


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Logits `[B, C]`: the model's output averaged over timesteps (the horizon-T output, Eq. 4)."""
    return evaluation.logits(model, x).mean(0)


# ---------------------------------------------------------------------------
# Option checks, shared by the batch functions and the dataset-level entries
# ---------------------------------------------------------------------------


def _check_nonneg(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_pgd(step: float, iters: int, step_name: str = "PGD step") -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ConfigError(f"PGD iters must be an integer >= 0, got {iters!r}")
    if iters > 0 and (not math.isfinite(step) or step <= 0):
        raise ConfigError(f"{step_name} must be a finite number > 0, got {step}")


def _check_blur(factor: int, h: int, w: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError(f"blur factor must be an integer >= 1, got {factor!r}")
    if h // factor < 1 or w // factor < 1:
        raise ConfigError(f"blur factor {factor} is too large for {h}x{w} images")


def _check_steps(timesteps: Iterable[int], T: int) -> list[int]:
    """The chosen 0-based timesteps as a list, each checked to lie in [0, T-1]."""
    steps = list(timesteps.flatten().tolist() if isinstance(timesteps, Tensor) else timesteps)
    if not steps:
        raise ConfigError("timesteps is empty: choose at least one 0-based timestep to perturb")
    for t in steps:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T:
            raise ConfigError(f"timesteps must be integers in [0, {T - 1}] (0-based, T={T}), got {t!r}")
    return steps


def _check_window(name: str, value: int, T: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= T:
        raise ConfigError(f"{name} must be an integer in [1, T={T}], got {value!r}")


# ---------------------------------------------------------------------------
# Corruptions (Table 1: Gaussian noise, Blur)
# ---------------------------------------------------------------------------


def _draw(sample: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's device and moved, so a CPU generator gives the same values on any device.
    device = generator.device if generator is not None else x.device
    return sample(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def gaussian_noise(x: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None, clip: bool = True) -> Tensor:
    """Add Gaussian noise whose l2 norm is `ratio` x the input's l2 norm (Table 1: 50%).

    The norm is per sample (per sample and timestep for `[T, B, C, H, W]`). The ratio is exact
    before clipping; `clip=True` keeps valid pixels, so the realised norm is slightly smaller.
    """
    _check_nonneg("noise ratio", ratio)
    if not x.is_floating_point():
        raise ConfigError(f"gaussian_noise expects float pixels in [0, 1], got dtype {x.dtype}")
    dims = tuple(range(2 if x.ndim == 5 else 1, x.ndim))  # per sample (and timestep)
    noise = _draw(torch.randn, x, generator)
    x_norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    n_norm = torch.linalg.vector_norm(noise, dim=dims, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    out = x + noise * (ratio * x_norm / n_norm)
    return out.clamp(0.0, 1.0) if clip else out


def blur(x: Tensor, factor: int = 2) -> Tensor:
    """Bilinear downsample to `H // factor` x `W // factor` and back (Table 1 Blur, after Achille et al. 2018).

    32x32 -> 16x16 -> 32x32 with `align_corners=False`; accepts `[B, C, H, W]` or `[T, B, C, H, W]`.
    """
    if x.ndim not in (4, 5):
        raise ConfigError(f"blur expects images [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    _check_blur(factor, h, w)
    flat = x.reshape(-1, *x.shape[-3:])
    down = F.interpolate(flat, size=(h // factor, w // factor), mode="bilinear", align_corners=False)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False).reshape(x.shape)


# ---------------------------------------------------------------------------
# Attacks (Table 1: FGSM, PGD) with optional timestep windows
# ---------------------------------------------------------------------------


def windowed_input(x: Tensor, delta: Tensor, timesteps: Iterable[int], T: int) -> Tensor:
    """Per-timestep input `[T, B, ...]` equal to `x` except `x + delta` at the 0-based `timesteps`.

    `x` is static `[B, ...]` (repeated over T) or per-timestep `[T, B, C, H, W]`; `delta` is shaped
    like one timestep (the same perturbation at every chosen timestep) or like the full `[T, B, ...]`.
    No clipping here: keep `x + delta` in [0, 1].
    """
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    if x.ndim == 5 and x.shape[0] != T:
        raise ConfigError(f"x has {x.shape[0]} timesteps but T={T}")
    xt = x if x.ndim == 5 else x.unsqueeze(0).expand(T, *x.shape)
    d = delta if delta.ndim == xt.ndim else delta.unsqueeze(0)
    if d.shape[1:] != xt.shape[1:] or d.shape[0] not in (1, T):
        raise ConfigError(f"delta shape {tuple(delta.shape)} does not fit x shape {tuple(x.shape)} with T={T}")
    mask = torch.zeros(T, dtype=xt.dtype, device=xt.device)
    mask[sorted(set(_check_steps(timesteps, T)))] = 1
    return xt + mask.view(T, *([1] * (xt.ndim - 1))) * d


def _infer_T(model: nn.Module, x: Tensor, T: int | None) -> int:
    """T from a per-timestep `x`, from `T`, or by running the model once."""
    if x.ndim == 5:
        if T is not None and T != x.shape[0]:
            raise ConfigError(f"T={T} but the per-timestep input has {x.shape[0]} timesteps")
        return int(x.shape[0])
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"T must be a positive integer, got {T!r}")
        return T
    with torch.no_grad():
        return int(evaluation.logits(model, x).shape[0])


def _check_attack_args(x: Tensor, y: Tensor, eps: float) -> None:
    if not x.is_floating_point():
        raise ConfigError(f"attacks expect float pixels in [0, 1], got dtype {x.dtype}")
    _check_nonneg("eps", eps)
    b = evaluation.batch_size_of(x)
    if y.ndim != 1 or y.shape[0] != b or y.is_floating_point():
        raise ConfigError(f"labels must be integer class indices [B={b}], got {tuple(y.shape)} {y.dtype}")


class _Perturber:
    """Builds the attacked input from `delta` and takes gradients w.r.t. `delta` only."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, timesteps: Iterable[int] | None, T: int | None):
        self.model, self.x, self.y = model, x, y
        self.steps = self.T = None
        if timesteps is not None:  # checked before any gradient work
            self.T = _infer_T(model, x, T)
            self.steps = _check_steps(timesteps, self.T)

    def apply(self, delta: Tensor) -> Tensor:
        return self.x + delta if self.steps is None else windowed_input(self.x, delta, self.steps, self.T)

    def grad(self, delta: Tensor) -> Tensor:
        # autograd.grad w.r.t. delta only: parameter .grad fields are left untouched.
        with torch.enable_grad():
            delta = delta.detach().requires_grad_(True)
            # Sum, not mean, so a sample's gradient does not shrink with batch size.
            loss = F.cross_entropy(predict(self.model, self.apply(delta)), self.y, reduction="sum")
            # No differentiable path (e.g. a hard threshold without surrogate): a zero gradient,
            # exactly the gradient masking that check_gradient_masking looks for.
            g = torch.autograd.grad(loss, delta, allow_unused=True)[0] if loss.requires_grad else None
        return torch.zeros_like(delta) if g is None else g


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, *,
         timesteps: Iterable[int] | None = None, T: int | None = None) -> Tensor:
    """FGSM (Goodfellow et al. 2014; Table 1 uses eps = 8/255): `clip(x + eps sign(grad_x CE(mean_t logits, y)))`.

    The model's mode is left as is (put it in eval first). With `timesteps` (0-based, beyond the
    paper) only those timesteps are perturbed and the result is `[T, B, ...]`; T comes from `T`, a
    per-timestep `x`, or one run of the model.
    """
    _check_attack_args(x, y, eps)
    p = _Perturber(model, x, y, timesteps, T)
    delta = (x + eps * p.grad(torch.zeros_like(x)).sign()).clamp(0.0, 1.0) - x
    return p.apply(delta).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, step: float = 4 / 255, iters: int = 10,
        random_start: bool = True, generator: torch.Generator | None = None, *,
        timesteps: Iterable[int] | None = None, T: int | None = None) -> Tensor:
    """l-inf PGD (Madry et al. 2017; Table 1 uses eps = 8/255, alpha = 4/255, n = 10).

    Each iteration takes a signed-gradient step of size `step` on the CE of the mean-over-time
    logits and projects onto the eps-ball around `x` and onto [0, 1]. `random_start` begins at a
    uniform point of the eps-ball drawn from `generator`. `timesteps`/`T` as in :func:`fgsm`.
    """
    _check_attack_args(x, y, eps)
    _check_pgd(step, iters)
    p = _Perturber(model, x, y, timesteps, T)
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        delta = (x + (2 * _draw(torch.rand, x, generator) - 1) * eps).clamp(0.0, 1.0) - x
    for _ in range(iters):
        delta = (delta + step * p.grad(delta).sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return p.apply(delta).clamp(0.0, 1.0).detach()


# ---------------------------------------------------------------------------
# Dataset level: one accuracy pass per named perturbation
# ---------------------------------------------------------------------------


def _dataset(images: Any, labels: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return evaluation.check_images(images, labels)


def _model_T(model: nn.Module, images: Tensor, T: int | None) -> int:
    """T of the model on these images: given, or read from one eval-mode forward pass on the first image."""
    with evaluation.eval_mode(model):
        return _infer_T(model, evaluation.to_float(images[:1].to(evaluation.model_device(model))), T)


def _generator(seed: int) -> torch.Generator:
    # Always on the CPU: the same seed gives the same draws on any device.
    return torch.Generator().manual_seed(int(seed))


def _pgd_attack(model: nn.Module, eps: float, step: float, iters: int, random_start: bool, seed: int,
                timesteps: Sequence[int] | None = None, T: int | None = None) -> Perturbation:
    # Random starts always come from seed + 1, so the same settings give the same attack in every report.
    gen = _generator(seed + 1)
    return lambda x, y: pgd(model, x, y, eps, step, iters, random_start, gen, timesteps=timesteps, T=T)


def _accuracies(model: nn.Module, images: Tensor, labels: Tensor, perturbations: Mapping[str, Perturbation | None],
                batch_size: int, desc: str, show: bool) -> dict[str, float]:
    """Accuracy under each named perturbation (None: clean), one pass each, in eval mode (modes restored).

    Each perturbation holds its own generator, so its numbers do not depend on what else is measured.
    """
    total = math.ceil(len(labels) / batch_size) * len(perturbations)
    with progress_bar.bar(total, desc, enabled=show) as bar:
        return {name: evaluation.accuracy(model, images, labels, batch_size, perturb=p, on_batch=bar.update)
                for name, p in perturbations.items()}


def evaluate(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    batch_size: int = 256,
    eps: float = 8 / 255,
    pgd_step: float = 4 / 255,
    pgd_iters: int = 10,
    random_start: bool = True,
    noise_ratio: float = 0.5,
    noise_clip: bool = True,
    blur_factor: int = 2,
    attack_timesteps: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Table 1 row: clean / Gaussian-noise / blur / FGSM / PGD accuracy of `model`.

    `images` are `[N, C, H, W]` uint8 or float in [0, 1], `labels` `[N]`; defaults are the paper's
    settings. Noise comes from a CPU generator seeded with `seed`, PGD random starts from `seed + 1`.
    `attack_timesteps` (beyond the paper) restricts FGSM/PGD to those 0-based timesteps.

    Returns accuracies in [0, 1] under `clean`, `gaussian`, `blur`, `fgsm`, `pgd`; `drop` (clean minus
    each); `settings`; and `warnings` (e.g. PGD weaker than FGSM, a sign of gradient masking).
    """
    images, labels = _dataset(images, labels, batch_size)
    _check_nonneg("eps", eps)
    _check_pgd(pgd_step, pgd_iters)
    _check_nonneg("noise ratio", noise_ratio)
    _check_blur(blur_factor, *images.shape[-2:])
    T = None
    if attack_timesteps is not None:
        T = _model_T(model, images, None)
        attack_timesteps = _check_steps(attack_timesteps, T)
    noise = _generator(seed)
    result: dict[str, Any] = _accuracies(model, images, labels, {
        "clean": None,
        "gaussian": lambda x, y: gaussian_noise(x, noise_ratio, noise, clip=noise_clip),
        "blur": lambda x, y: blur(x, blur_factor),
        "fgsm": lambda x, y: fgsm(model, x, y, eps, timesteps=attack_timesteps, T=T),
        "pgd": _pgd_attack(model, eps, pgd_step, pgd_iters, random_start, seed, attack_timesteps, T),
    }, batch_size, "robustness", progress)
    result["drop"] = {k: result["clean"] - result[k] for k in ("gaussian", "blur", "fgsm", "pgd")}
    result["settings"] = {
        "n": len(labels), "batch_size": batch_size, "fgsm_eps": eps, "pgd_eps": eps, "pgd_step": pgd_step,
        "pgd_iters": pgd_iters, "pgd_random_start": random_start, "noise_ratio": noise_ratio,
        "noise_clip": noise_clip, "blur_factor": blur_factor, "attack_timesteps": attack_timesteps, "seed": seed,
        "device": str(evaluation.model_device(model)),
    }
    # PGD from the FGSM budget with more steps should never be clearly weaker.
    result["warnings"] = [
        f"PGD accuracy {result['pgd']:.2%} is above FGSM accuracy {result['fgsm']:.2%}: "
        "gradients may be masked (check with eps_sweep/check_gradient_masking)"
    ] if pgd_iters > 0 and result["pgd"] > result["fgsm"] + 0.02 else []
    return result


def eps_sweep(
    model: nn.Module,
    images: Any,
    labels: Any,
    eps_list: Sequence[float] = DEFAULT_EPS_LIST,
    attack: str = "pgd",
    *,
    batch_size: int = 256,
    pgd_step_ratio: float = 0.5,
    pgd_iters: int = 10,
    random_start: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[tuple[float, float]]:
    """Accuracy under `attack` ("pgd" or "fgsm") for each eps: `[(eps, acc), ...]`.

    The PGD step is `pgd_step_ratio * eps` (0.5 matches the paper's 4/255 for 8/255), so the
    8/255 point equals :func:`evaluate`'s PGD. Feed the result to :func:`check_gradient_masking`.
    """
    if attack not in ("pgd", "fgsm"):
        raise ConfigError(f"attack must be 'pgd' or 'fgsm', got {attack!r}")
    eps_values = [float(e) for e in eps_list]
    if not eps_values:
        raise ConfigError("eps_list is empty")
    for e in eps_values:
        _check_nonneg("eps", e)
    _check_pgd(pgd_step_ratio, pgd_iters, "pgd_step_ratio")
    images, labels = _dataset(images, labels, batch_size)

    def attacked(e: float) -> Perturbation | None:
        if e == 0:
            return None
        if attack == "fgsm":
            return lambda x, y: fgsm(model, x, y, e)
        return _pgd_attack(model, e, pgd_step_ratio * e, pgd_iters, random_start, seed)

    acc = _accuracies(model, images, labels, {repr(e): attacked(e) for e in eps_values}, batch_size,
                      f"{attack} eps sweep", progress)
    return [(e, acc[repr(e)]) for e in eps_values]


def check_gradient_masking(
    sweep: Sequence[tuple[float, float]],
    *,
    max_final_acc: float = 0.1,
    large_eps: float = 32 / 255,
    tolerance: float = 0.02,
) -> str | None:
    """Warning text if an eps sweep looks like gradient masking, else `None`.

    Under a working white-box attack accuracy falls (roughly) monotonically with eps and reaches ~0
    at large eps. SNNs often break this (spike non-differentiability, surrogate-gradient mismatch),
    which inflates robustness. Flags: accuracy rising by more than `tolerance` as eps grows, or
    accuracy above `max_final_acc` at the largest eps when that eps >= `large_eps` (skipped when
    clean accuracy is itself below `max_final_acc`).
    """
    if not sweep:
        raise ConfigError("empty eps sweep")
    pts = sorted((float(e), float(a)) for e, a in sweep)
    problems = [f"accuracy rises from {a0:.1%} at eps={e0 * 255:.3g}/255 to {a1:.1%} at eps={e1 * 255:.3g}/255"
                for (e0, a0), (e1, a1) in zip(pts, pts[1:]) if a1 > a0 + tolerance]
    e_max, a_max = pts[-1]
    if e_max >= large_eps and a_max > max_final_acc and pts[0][1] > max_final_acc:
        problems.append(f"accuracy is still {a_max:.1%} at eps={e_max * 255:.3g}/255 (expected <= {max_final_acc:.0%})")
    return None if not problems else (
        "possible gradient masking: " + "; ".join(problems) + ". Reported robustness may be overestimated; try "
        "more PGD iterations, random restarts, a different surrogate gradient, or a transfer/black-box attack.")


def windowed_attack_report(
    model: nn.Module,
    images: Any,
    labels: Any,
    k: int,
    *,
    eps: float = 8 / 255,
    pgd_step: float = 4 / 255,
    pgd_iters: int = 10,
    random_start: bool = True,
    T: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """PGD accuracy when only the first k vs only the last k timesteps are attacked.

    Beyond the paper: its Discussion notes early timesteps carry the information (TIC) and so
    should be the vulnerable ones. Each window gets one perturbation shared by its timesteps, with
    the same l-inf budget. Returns accuracies `clean`, `all` (every timestep attacked; equals
    :func:`evaluate`'s PGD), `first_k`, `last_k`, plus `k`, `T`, the 0-based
    `first_timesteps`/`last_timesteps` and `settings`.
    """
    images, labels = _dataset(images, labels, batch_size)
    _check_nonneg("eps", eps)
    _check_pgd(pgd_step, pgd_iters)
    T = _model_T(model, images, T)
    _check_window("k", k, T)
    first, last = list(range(k)), list(range(T - k, T))

    def attack(steps: list[int] | None) -> Perturbation:
        return _pgd_attack(model, eps, pgd_step, pgd_iters, random_start, seed, steps, T)

    result: dict[str, Any] = _accuracies(
        model, images, labels, {"clean": None, "all": attack(None), "first_k": attack(first), "last_k": attack(last)},
        batch_size, "windowed PGD", progress)
    result.update(k=k, T=T, first_timesteps=first, last_timesteps=last, settings={
        "n": len(labels), "eps": eps, "pgd_step": pgd_step, "pgd_iters": pgd_iters, "pgd_random_start": random_start,
        "seed": seed, "device": str(evaluation.model_device(model))})
    return result


def time_window_deficits(
    model: nn.Module,
    images: Any,
    labels: Any,
    *,
    window: int = 3,
    noise_ratio: float = 0.5,
    T: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fig. 2: accuracy with Gaussian noise only in timesteps [t, t+w-1], for every window start t.

    The noise follows the Table 1 rule (l2 norm = `noise_ratio` x the clean image's) and every
    window sees the same noisy pixels of an image. Reports absolute accuracy per window and the
    paper's relative accuracy Acc[t..t+w-1] - Acc[T-w+1..T]. Window starts are 1-based, as in the paper.
    """
    images, labels = _dataset(images, labels, batch_size)
    _check_nonneg("noise ratio", noise_ratio)
    T = _model_T(model, images, T)
    _check_window("window", window, T)

    def noisy_window(start: int) -> Perturbation:
        gen = _generator(seed)  # the same seed in every window pass: the same noise per image
        return lambda x, y: windowed_input(x, gaussian_noise(x, noise_ratio, gen) - x, range(start, start + window), T)

    starts = list(range(1, T - window + 2))
    acc = _accuracies(model, images, labels, {"clean": None, **{str(s): noisy_window(s - 1) for s in starts}},
                      batch_size, "time-window deficits", progress)
    per_window = [acc[str(s)] for s in starts]
    return {
        "window": window,
        "T": T,
        "window_starts": starts,
        "accuracy": per_window,
        "relative_accuracy": [a - per_window[-1] for a in per_window],
        "clean": acc["clean"],
        "settings": {"n": len(labels), "noise_ratio": noise_ratio, "seed": seed,
                     "device": str(evaluation.model_device(model))},
    }


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

_COLUMNS = (("gaussian", "Gaussian noise"), ("blur", "Blur"), ("fgsm", "FGSM"), ("pgd", "PGD"))


def _cell(result: Mapping[str, Any], key: str) -> str:
    if result.get(key) is None:
        return "n/a"
    acc = 100 * float(result[key])
    if "clean" not in result:
        return f"{acc:.2f}"
    drop = 100 * (float(result["clean"]) - float(result[key]))
    return f"{acc:.2f} ({-drop:+.2f})"


def to_markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown Table 1 with one row per ``name -> evaluate() result``: ``acc (-drop)`` in %."""
    rows = [[name, "n/a" if res.get("clean") is None else f"{100 * float(res['clean']):.2f}",
             *(_cell(res, key) for key, _ in _COLUMNS)] for name, res in results.items()]
    return markdown_table(["model", "clean", "Gaussian noise", "Blur", "FGSM", "PGD"], rows) + "\n"


def to_markdown(result: Mapping[str, Any], name: str = "model") -> str:
    """Markdown Table 1 (header + one row) for an :func:`evaluate` result, e.g. ``69.01 (-23.03)``."""
    return to_markdown_table({name: result})
