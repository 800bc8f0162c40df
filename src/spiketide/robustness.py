"""Robustness of SNNs to noise, blur and adversarial attacks (Table 1 of the paper).

Table 1 reports, for each model, clean accuracy and the accuracy (and drop w.r.t.
clean) under

* Gaussian noise whose l2 norm is 50% of the input's l2 norm,
* blur: bilinear downsampling by 2 (32x32 -> 16x16) and bilinear upsampling back,
* FGSM with eps = 8/255 (single signed-gradient step),
* l-inf PGD with eps = 8/255, step alpha = 4/255, n = 10 iterations.

Conventions (shared by the package): a model maps pixels in [0, 1], either a static
batch ``[B, C, H, W]`` (same image every timestep) or a per-timestep batch
``[T, B, C, H, W]``, to logits ``[T, B, num_classes]``; the prediction is the mean
over timesteps. A 5-D input is therefore always read as per-timestep. Attack budgets
are in pixel space because models normalise inputs themselves, and gradients flow
through the surrogate spike function (BPTT), so the attacks are plain autograd.

Beyond the paper: every attack takes ``timesteps`` (0-based indices) to perturb only
some timesteps (the paper's Discussion suggests attacking the early, information-rich
timesteps), an eps sweep with a gradient-masking check, and a first-k vs last-k
windowed attack report.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from spiketide.errors import ConfigError, ModelOutputError

__all__ = [
    "predict",
    "gaussian_noise",
    "blur",
    "windowed_input",
    "fgsm",
    "pgd",
    "evaluate",
    "eps_sweep",
    "time_window_deficits",
    "check_gradient_masking",
    "windowed_attack_report",
    "to_markdown",
    "to_markdown_table",
    "DEFAULT_EPS_LIST",
]

DEFAULT_EPS_LIST: tuple[float, ...] = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)


# ---------------------------------------------------------------------------
# Model output handling
# ---------------------------------------------------------------------------


def _is_per_timestep(x: Tensor) -> bool:
    """A 5-D input is ``[T, B, C, H, W]`` (package convention); anything else is ``[B, ...]``."""
    return x.ndim == 5


def _batch_size(x: Tensor) -> int:
    return int(x.shape[1] if _is_per_timestep(x) else x.shape[0])


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` and check it returned logits ``[T, B, C]`` with the input's batch size."""
    out = model(x)
    batch = _batch_size(x)
    if not isinstance(out, Tensor):
        raise ModelOutputError(
            f"model returned {type(out).__name__}; expected a logits tensor of shape [T, B={batch}, num_classes]"
        )
    if out.ndim != 3 or out.shape[1] != batch:
        raise ModelOutputError(
            f"model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; "
            f"expected logits [T, B={batch}, num_classes] (the prediction is the mean over T)"
        )
    return out


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Logits ``[B, C]``: the model's output averaged over timesteps (the horizon-T output, Eq. 4)."""
    return _forward(model, x).mean(0)


# ---------------------------------------------------------------------------
# Corruptions (Table 1: Gaussian noise, Blur)
# ---------------------------------------------------------------------------


def _sample_dims(x: Tensor) -> tuple[int, ...]:
    start = 2 if _is_per_timestep(x) else 1
    return tuple(range(start, x.ndim))


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the generator's device and move, so a CPU generator gives the same
    # noise whichever device the images live on.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _rand_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def gaussian_noise(
    x: Tensor,
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> Tensor:
    """Add Gaussian noise whose l2 norm is ``ratio`` x the input's l2 norm (Table 1: 50%).

    The norm is taken per sample for ``[B, ...]`` inputs and per sample per timestep
    for per-timestep ``[T, B, C, H, W]`` inputs. The drawn noise is rescaled so the
    ratio is exact *before* clipping; with ``clip=True`` (default, keeps valid pixels)
    the result is clipped to [0, 1], which makes the realised noise norm slightly
    smaller than ``ratio`` x ||x||.
    """
    if not math.isfinite(ratio) or ratio < 0:
        raise ConfigError(f"noise ratio must be a finite number >= 0, got {ratio}")
    if not x.is_floating_point():
        raise ConfigError(f"gaussian_noise expects float pixels in [0, 1], got dtype {x.dtype}")
    dims = _sample_dims(x)
    noise = _randn_like(x, generator)
    x_norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
    n_norm = torch.linalg.vector_norm(noise, dim=dims, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    out = x + noise * (ratio * x_norm / n_norm)
    return out.clamp(0.0, 1.0) if clip else out


def blur(x: Tensor, factor: int = 2) -> Tensor:
    """Bilinear downsample to ``H // factor`` x ``W // factor`` and back to H x W (Table 1 Blur).

    Follows Achille et al. (2018) as in the paper (32x32 -> 16x16 -> 32x32), with
    ``align_corners=False``. Accepts ``[B, C, H, W]`` or ``[T, B, C, H, W]``.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError(f"blur factor must be an integer >= 1, got {factor!r}")
    if x.ndim not in (4, 5):
        raise ConfigError(f"blur expects images [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    small = (h // factor, w // factor)
    if min(small) < 1:
        raise ConfigError(f"blur factor {factor} is too large for {h}x{w} images")
    flat = x.reshape(-1, *x.shape[-3:])
    down = F.interpolate(flat, size=small, mode="bilinear", align_corners=False)
    up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
    return up.reshape(x.shape)


# ---------------------------------------------------------------------------
# Attacks (Table 1: FGSM, PGD) with optional timestep windows
# ---------------------------------------------------------------------------


def _timestep_mask(timesteps: Iterable[int], T: int, like: Tensor) -> Tensor:
    """``[T]`` 0/1 mask of the chosen 0-based timesteps, validated."""
    if isinstance(timesteps, Tensor):
        timesteps = timesteps.flatten().tolist()
    steps = list(timesteps)
    if not steps:
        raise ConfigError("timesteps is empty: choose at least one 0-based timestep to perturb")
    for t in steps:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T:
            raise ConfigError(f"timesteps must be integers in [0, {T - 1}] (0-based, T={T}), got {t!r}")
    mask = torch.zeros(T, dtype=like.dtype, device=like.device)
    mask[sorted(set(steps))] = 1
    return mask


def windowed_input(x: Tensor, delta: Tensor, timesteps: Iterable[int], T: int) -> Tensor:
    """Per-timestep input ``[T, B, ...]`` equal to ``x`` except ``x + delta`` at ``timesteps``.

    ``x`` is a static batch ``[B, ...]`` (repeated over T) or a per-timestep batch
    ``[T, B, C, H, W]``; ``delta`` is either shaped like one timestep ``[B, ...]``
    (the same perturbation at every chosen timestep) or like the full ``[T, B, ...]``.
    Timesteps are 0-based. No clipping is done here: keep ``x + delta`` in [0, 1].
    """
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    if _is_per_timestep(x):
        if x.shape[0] != T:
            raise ConfigError(f"x has {x.shape[0]} timesteps but T={T}")
        xt = x
    else:
        xt = x.unsqueeze(0).expand(T, *x.shape)
    d = delta if delta.ndim == xt.ndim else delta.unsqueeze(0)
    if d.shape[1:] != xt.shape[1:] or d.shape[0] not in (1, T):
        raise ConfigError(f"delta shape {tuple(delta.shape)} does not fit x shape {tuple(x.shape)} with T={T}")
    mask = _timestep_mask(timesteps, T, xt).view(T, *([1] * (xt.ndim - 1)))
    return xt + mask * d


def _infer_T(model: nn.Module, x: Tensor, T: int | None) -> int:
    if _is_per_timestep(x):
        if T is not None and T != x.shape[0]:
            raise ConfigError(f"T={T} but the per-timestep input has {x.shape[0]} timesteps")
        return int(x.shape[0])
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"T must be a positive integer, got {T!r}")
        return T
    with torch.no_grad():
        return int(_forward(model, x).shape[0])


def _check_attack_args(x: Tensor, y: Tensor, eps: float) -> None:
    if not x.is_floating_point():
        raise ConfigError(f"attacks expect float pixels in [0, 1], got dtype {x.dtype}")
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"eps must be a finite number >= 0, got {eps}")
    if y.ndim != 1 or y.shape[0] != _batch_size(x) or y.is_floating_point():
        raise ConfigError(f"labels must be integer class indices [B={_batch_size(x)}], got {tuple(y.shape)} {y.dtype}")


class _Perturber:
    """Builds the attacked input from ``delta`` and takes gradients w.r.t. ``delta`` only."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, timesteps: Iterable[int] | None, T: int | None):
        self.model, self.x, self.y = model, x, y
        self.steps: list[int] | None = None
        self.T: int | None = None
        if timesteps is not None:
            self.T = _infer_T(model, x, T)
            self.steps = list(timesteps.flatten().tolist() if isinstance(timesteps, Tensor) else timesteps)
            _timestep_mask(self.steps, self.T, x)  # validate early, before any gradient work

    def apply(self, delta: Tensor) -> Tensor:
        if self.steps is None:
            return self.x + delta
        return windowed_input(self.x, delta, self.steps, self.T)

    def grad(self, delta: Tensor) -> Tensor:
        # autograd.grad w.r.t. delta only: parameter .grad fields are left untouched.
        with torch.enable_grad():
            delta = delta.detach().requires_grad_(True)
            logits = predict(self.model, self.apply(delta))
            # Sum, not mean, so a sample's gradient does not shrink with batch size.
            loss = F.cross_entropy(logits, self.y, reduction="sum")
            if not loss.requires_grad:
                # No differentiable path from input to output (e.g. a hard threshold
                # without surrogate): the attack sees a zero gradient, which is exactly
                # the gradient masking that check_gradient_masking looks for.
                return torch.zeros_like(delta)
            (g,) = torch.autograd.grad(loss, delta, allow_unused=True)
        return torch.zeros_like(delta) if g is None else g


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float = 8 / 255,
    *,
    timesteps: Iterable[int] | None = None,
    T: int | None = None,
) -> Tensor:
    """FGSM (Goodfellow et al. 2014; Table 1 uses eps = 8/255).

    ``x_adv = clip(x + eps * sign(grad_x CE(mean_t logits, y)), 0, 1)``. The model's
    train/eval mode is left as is (put it in eval first).

    With ``timesteps`` (0-based indices, beyond the paper) only those timesteps are
    perturbed and the result is a per-timestep input ``[T, B, ...]``; T is taken from
    ``T``, from a per-timestep ``x``, or by running the model once.
    """
    _check_attack_args(x, y, eps)
    p = _Perturber(model, x, y, timesteps, T)
    g = p.grad(torch.zeros_like(x))
    delta = (x + eps * g.sign()).clamp(0.0, 1.0) - x
    return p.apply(delta).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float = 8 / 255,
    step: float = 4 / 255,
    iters: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    *,
    timesteps: Iterable[int] | None = None,
    T: int | None = None,
) -> Tensor:
    """l-inf PGD (Madry et al. 2017; Table 1 uses eps = 8/255, alpha = 4/255, n = 10).

    Each iteration takes a signed-gradient step of size ``step`` on the CE of the
    mean-over-time logits, then projects onto the eps-ball around ``x`` and onto
    [0, 1]. ``random_start`` begins from a uniform point in the eps-ball (drawn from
    ``generator``). ``timesteps``/``T`` restrict the perturbation to some timesteps,
    as in :func:`fgsm`; the result is then ``[T, B, ...]``.
    """
    _check_attack_args(x, y, eps)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ConfigError(f"PGD iters must be an integer >= 0, got {iters!r}")
    if iters > 0 and (not math.isfinite(step) or step <= 0):
        raise ConfigError(f"PGD step must be a finite number > 0, got {step}")
    p = _Perturber(model, x, y, timesteps, T)
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        delta = (2 * _rand_like(x, generator) - 1) * eps
        delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(iters):
        delta = delta + step * p.grad(delta).sign()
        delta = delta.clamp(-eps, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return p.apply(delta).clamp(0.0, 1.0).detach()


# ---------------------------------------------------------------------------
# Dataset-level evaluation
# ---------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _as_tensor(a: Any, name: str) -> Tensor:
    try:
        return a if isinstance(a, Tensor) else torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{name} could not be converted to a tensor: {exc}") from exc


def _check_dataset(images: Any, labels: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    images, labels = _as_tensor(images, "images"), _as_tensor(labels, "labels")
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
    if images.ndim < 2 or images.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"images {tuple(images.shape)} and labels {tuple(labels.shape)} must have the same length N "
            "(images are [N, C, H, W], uint8 or float in [0, 1])"
        )
    if images.shape[0] == 0:
        raise ConfigError("no images to evaluate")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ConfigError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return images, labels


def _iter_batches(
    images: Tensor, labels: Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, images.shape[0], batch_size):
        xb = images[start : start + batch_size].to(device)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        else:
            xb = xb.float()
            lo, hi = float(xb.min()), float(xb.max())
            if lo < 0.0 or hi > 1.0:
                raise ConfigError(
                    f"float images must be pixels in [0, 1] (models normalise themselves), got range [{lo:.3g}, {hi:.3g}]"
                )
        yield xb, labels[start : start + batch_size].to(device).long()


def _progress(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="batch", disable=not (progress and sys.stderr.isatty()), leave=False)


def _n_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with torch.no_grad():
        return int((predict(model, x).argmax(-1) == y).sum())


def _generator(seed: int) -> torch.Generator:
    # Always a CPU generator: the same seed gives the same draws on any device.
    return torch.Generator().manual_seed(int(seed))


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
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Table 1 row: clean / Gaussian-noise / blur / FGSM / PGD accuracy of ``model``.

    ``images`` are ``[N, C, H, W]`` uint8 (divided by 255) or float in [0, 1];
    ``labels`` are ``[N]`` class indices. Defaults are the paper's settings. The model
    is put in eval mode for the duration and restored afterwards. Noise and PGD random
    starts come from CPU generators seeded with ``seed``, so results reproduce.
    ``attack_timesteps`` (beyond the paper) restricts FGSM/PGD to those 0-based
    timesteps.

    Returns accuracies in [0, 1] under ``clean``, ``gaussian``, ``blur``, ``fgsm``,
    ``pgd``; ``drop`` (clean minus each); ``settings``; and ``warnings`` (e.g. PGD
    weaker than FGSM, a sign of gradient masking).
    """
    images, labels = _check_dataset(images, labels, batch_size)
    dev = _model_device(model, device)
    noise_gen, pgd_gen = _generator(seed), _generator(seed + 1)
    n = int(labels.shape[0])
    keys = ("clean", "gaussian", "blur", "fgsm", "pgd")
    correct = dict.fromkeys(keys, 0)
    T: int | None = None
    n_batches = math.ceil(n / batch_size)
    with _eval_mode(model), _progress(n_batches, "robustness", progress) as bar:
        for xb, yb in _iter_batches(images, labels, batch_size, dev):
            if attack_timesteps is not None and T is None:
                T = _infer_T(model, xb, None)
            correct["clean"] += _n_correct(model, xb, yb)
            correct["gaussian"] += _n_correct(model, gaussian_noise(xb, noise_ratio, noise_gen, clip=noise_clip), yb)
            correct["blur"] += _n_correct(model, blur(xb, blur_factor), yb)
            x_f = fgsm(model, xb, yb, eps, timesteps=attack_timesteps, T=T)
            correct["fgsm"] += _n_correct(model, x_f, yb)
            x_p = pgd(model, xb, yb, eps, pgd_step, pgd_iters, random_start, pgd_gen, timesteps=attack_timesteps, T=T)
            correct["pgd"] += _n_correct(model, x_p, yb)
            bar.update(1)
    result: dict[str, Any] = {k: correct[k] / n for k in keys}
    result["drop"] = {k: result["clean"] - result[k] for k in keys[1:]}
    result["settings"] = {
        "n": n,
        "batch_size": batch_size,
        "fgsm_eps": eps,
        "pgd_eps": eps,
        "pgd_step": pgd_step,
        "pgd_iters": pgd_iters,
        "pgd_random_start": random_start,
        "noise_ratio": noise_ratio,
        "noise_clip": noise_clip,
        "blur_factor": blur_factor,
        "attack_timesteps": None if attack_timesteps is None else list(attack_timesteps),
        "seed": seed,
        "device": str(dev),
    }
    warnings: list[str] = []
    # PGD from the FGSM budget with more steps should never be clearly weaker.
    if pgd_iters > 0 and result["pgd"] > result["fgsm"] + 0.02:
        warnings.append(
            f"PGD accuracy {result['pgd']:.2%} is above FGSM accuracy {result['fgsm']:.2%}: "
            "gradients may be masked (check with eps_sweep/check_gradient_masking)"
        )
    result["warnings"] = warnings
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
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[tuple[float, float]]:
    """Accuracy under ``attack`` ("pgd" or "fgsm") for each eps: ``[(eps, acc), ...]``.

    The PGD step is ``pgd_step_ratio * eps`` (0.5 matches the paper's 4/255 for 8/255).
    Feed the result to :func:`check_gradient_masking`.
    """
    if attack not in ("pgd", "fgsm"):
        raise ConfigError(f"attack must be 'pgd' or 'fgsm', got {attack!r}")
    eps_values = [float(e) for e in eps_list]
    if not eps_values:
        raise ConfigError("eps_list is empty")
    for e in eps_values:
        if not math.isfinite(e) or e < 0:
            raise ConfigError(f"eps values must be finite and >= 0, got {e}")
    images, labels = _check_dataset(images, labels, batch_size)
    dev = _model_device(model, device)
    gen = _generator(seed)
    correct = [0] * len(eps_values)
    n = int(labels.shape[0])
    with _eval_mode(model), _progress(math.ceil(n / batch_size), f"{attack} eps sweep", progress) as bar:
        for xb, yb in _iter_batches(images, labels, batch_size, dev):
            for i, e in enumerate(eps_values):
                if e == 0:
                    x_adv = xb
                elif attack == "fgsm":
                    x_adv = fgsm(model, xb, yb, e)
                else:
                    x_adv = pgd(model, xb, yb, e, pgd_step_ratio * e, pgd_iters, random_start, gen)
                correct[i] += _n_correct(model, x_adv, yb)
            bar.update(1)
    return [(e, c / n) for e, c in zip(eps_values, correct)]


def check_gradient_masking(
    sweep: Sequence[tuple[float, float]],
    *,
    max_final_acc: float = 0.1,
    large_eps: float = 32 / 255,
    tolerance: float = 0.02,
) -> str | None:
    """Warning text if an eps sweep looks like gradient masking, else ``None``.

    Under a working white-box attack accuracy falls (roughly) monotonically with eps
    and reaches ~0 at large eps. SNNs often break this (spike non-differentiability,
    surrogate-gradient mismatch), which makes attacks look weak and robustness look
    inflated. Flags: accuracy rising by more than ``tolerance`` as eps grows, or
    accuracy above ``max_final_acc`` at the largest eps when that eps >= ``large_eps``
    (skipped when clean accuracy is itself below ``max_final_acc``).
    """
    if not sweep:
        raise ConfigError("empty eps sweep")
    pts = sorted((float(e), float(a)) for e, a in sweep)
    problems: list[str] = []
    for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
        if a1 > a0 + tolerance:
            problems.append(f"accuracy rises from {a0:.1%} at eps={e0 * 255:.3g}/255 to {a1:.1%} at eps={e1 * 255:.3g}/255")
    e_max, a_max = pts[-1]
    if e_max >= large_eps and a_max > max_final_acc and pts[0][1] > max_final_acc:
        problems.append(f"accuracy is still {a_max:.1%} at eps={e_max * 255:.3g}/255 (expected <= {max_final_acc:.0%})")
    if not problems:
        return None
    return (
        "possible gradient masking: "
        + "; ".join(problems)
        + ". Reported robustness may be overestimated; try more PGD iterations, random restarts, "
        "a different surrogate gradient, or a transfer/black-box attack."
    )


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
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """PGD accuracy when only the first k vs only the last k timesteps are attacked.

    Beyond the paper: its Discussion notes early timesteps carry the information (TIC)
    and so should be the vulnerable ones. Each window gets one perturbation shared by
    its timesteps, with the same l-inf budget. Returns accuracies ``clean``, ``all``
    (every timestep attacked), ``first_k``, ``last_k``, plus ``k``, ``T``, the 0-based
    ``first_timesteps``/``last_timesteps`` and ``settings``.
    """
    images, labels = _check_dataset(images, labels, batch_size)
    dev = _model_device(model, device)
    n = int(labels.shape[0])
    keys = ("clean", "all", "first_k", "last_k")
    correct = dict.fromkeys(keys, 0)
    gen = _generator(seed)
    first: list[int] = []
    last: list[int] = []
    with _eval_mode(model), _progress(math.ceil(n / batch_size), "windowed PGD", progress) as bar:
        for xb, yb in _iter_batches(images, labels, batch_size, dev):
            if not first:
                T = _infer_T(model, xb, T)
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= T:
                    raise ConfigError(f"k must be an integer in [1, T={T}], got {k!r}")
                first, last = list(range(k)), list(range(T - k, T))
            correct["clean"] += _n_correct(model, xb, yb)
            attack = dict(eps=eps, step=pgd_step, iters=pgd_iters, random_start=random_start, generator=gen)
            correct["all"] += _n_correct(model, pgd(model, xb, yb, **attack), yb)
            correct["first_k"] += _n_correct(model, pgd(model, xb, yb, **attack, timesteps=first, T=T), yb)
            correct["last_k"] += _n_correct(model, pgd(model, xb, yb, **attack, timesteps=last, T=T), yb)
            bar.update(1)
    result: dict[str, Any] = {key: correct[key] / n for key in keys}
    result.update(
        k=k,
        T=T,
        first_timesteps=first,
        last_timesteps=last,
        settings={"n": n, "eps": eps, "pgd_step": pgd_step, "pgd_iters": pgd_iters,
                  "pgd_random_start": random_start, "seed": seed, "device": str(dev)},
    )
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
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fig. 2: accuracy with Gaussian noise only in timesteps [t, t+w-1], for every window start t.

    The noise follows the Table 1 rule (l2 norm = ``noise_ratio`` x the clean image's) and is
    drawn once per image, so every window sees the same noisy pixels. Reports absolute accuracy
    per window and the paper's relative accuracy Acc[t..t+w-1] - Acc[T-w+1..T]. Window starts
    are 1-based, as in the paper.
    """
    images, labels = _check_dataset(images, labels, batch_size)
    dev = _model_device(model, device)
    n = int(labels.shape[0])
    gen = _generator(seed)
    correct: list[int] = []
    clean = 0
    with _eval_mode(model), _progress(math.ceil(n / batch_size), "time-window deficits", progress) as bar:
        for xb, yb in _iter_batches(images, labels, batch_size, dev):
            if not correct:
                T = _infer_T(model, xb, T)
                if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= T:
                    raise ConfigError(f"window must be an integer in [1, T={T}], got {window!r}")
                correct = [0] * (T - window + 1)
            delta = gaussian_noise(xb, ratio=noise_ratio, generator=gen) - xb
            clean += _n_correct(model, xb, yb)
            for start in range(T - window + 1):
                x_t = windowed_input(xb, delta, range(start, start + window), T)
                correct[start] += _n_correct(model, x_t, yb)
            bar.update(1)
    acc = [c / n for c in correct]
    return {
        "window": window,
        "T": T,
        "window_starts": list(range(1, len(acc) + 1)),
        "accuracy": acc,
        "relative_accuracy": [a - acc[-1] for a in acc],
        "clean": clean / n,
        "settings": {"n": n, "noise_ratio": noise_ratio, "seed": seed, "device": str(dev)},
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
    lines = ["| model | clean | Gaussian noise | Blur | FGSM | PGD |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        clean = "n/a" if res.get("clean") is None else f"{100 * float(res['clean']):.2f}"
        cells = [str(name).replace("|", "\\|"), clean] + [_cell(res, key) for key, _ in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(result: Mapping[str, Any], name: str = "model") -> str:
    """Markdown Table 1 (header + one row) for an :func:`evaluate` result, e.g. ``69.01 (-23.03)``."""
    return to_markdown_table({name: result})
