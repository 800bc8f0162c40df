"""Tests for spiketide.robustness (Table 1 corruptions and attacks) on tiny CPU toy models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spiketide import robustness as rb
from spiketide.errors import ConfigError, ModelOutputError

T = 4


class RepeatLinear(nn.Module):
    """Linear classifier whose output is repeated over T (static input) or applied per timestep."""

    def __init__(self, d_in: int, n_cls: int, T: int = T, dtype=torch.float32):
        super().__init__()
        self.T = T
        self.fc = nn.Linear(d_in, n_cls, dtype=dtype)

    def forward(self, x):
        if x.ndim == 5:
            return self.fc(x.flatten(2))
        return self.fc(x.flatten(1)).unsqueeze(0).expand(self.T, -1, -1)


def spike(v):
    """Heaviside forward, sigmoid-derivative surrogate backward."""
    sg = torch.sigmoid(4 * v)
    return (v > 0).to(v.dtype) + sg - sg.detach()


class TinyLIF(nn.Module):
    """One LIF layer (Eq. 1, tau = 2) and a linear readout per timestep."""

    def __init__(self, d_in: int, n_cls: int = 3, hidden: int = 16, T: int = T, dtype=torch.float32):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(d_in, hidden, dtype=dtype)
        self.fc2 = nn.Linear(hidden, n_cls, dtype=dtype)

    def forward(self, x):
        if x.ndim != 5:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        u = torch.zeros(x.shape[1], self.fc1.out_features, dtype=x.dtype)
        outs = []
        for t in range(x.shape[0]):
            u = 0.5 * u + 0.5 * self.fc1(x[t].flatten(1))
            s = spike(u - 0.2)
            u = u * (1 - s)
            outs.append(self.fc2(s))
        return torch.stack(outs)


class StepModel(nn.Module):
    """Hard-threshold model: zero input gradient everywhere, the textbook gradient-masking case."""

    def __init__(self, T: int = T):
        super().__init__()
        self.T = T

    def forward(self, x):
        s = (x > 0.5).float().flatten(1).mean(1) - 0.5
        return (10 * torch.stack([-s, s], dim=1)).unsqueeze(0).expand(self.T, -1, -1)


class MeanModel(nn.Module):
    """Normal differentiable counterpart of StepModel: class 1 iff mean pixel > 0.5."""

    def __init__(self, T: int = T):
        super().__init__()
        self.T = T

    def forward(self, x):
        s = x.flatten(1).mean(1) - 0.5
        return (50 * torch.stack([-s, s], dim=1)).unsqueeze(0).expand(self.T, -1, -1)


def two_class_data(n: int = 64, seed: int = 0):
    """Class 0 pixels in [0.3, 0.4], class 1 in [0.6, 0.7]: 0.125 eps keeps them, 0.25 flips them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = torch.where(y == 1, 0.6, 0.3).view(n, 1, 1, 1)
    x = base + 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    return x, y


def image_data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


# ---------------------------------------------------------------------------


def test_predict_mean_and_shape_errors():
    model = RepeatLinear(48, 3)
    x, _ = image_data(5)
    assert torch.allclose(rb.predict(model, x), model(x).mean(0))

    class Flat(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3)

    class WrongBatch(nn.Module):
        def forward(self, x):
            return torch.zeros(T, x.shape[0] + 1, 3)

    class Pair(nn.Module):
        def forward(self, x):
            return torch.zeros(T, x.shape[0], 3), None

    # The output check is evaluation.check_logits, shared by every measurement.
    with pytest.raises(ModelOutputError, match=r"shape \(5, 3\).*expected per-timestep logits \[T, 5, C\]"):
        rb.predict(Flat(), x)
    with pytest.raises(ModelOutputError, match=r"\[T, 5, C\]"):
        rb.predict(WrongBatch(), x)
    with pytest.raises(ModelOutputError, match="tuple"):
        rb.predict(Pair(), x)


@pytest.mark.parametrize("shape,dims", [((6, 3, 8, 8), (1, 2, 3)), ((T, 6, 3, 8, 8), (2, 3, 4))])
def test_gaussian_noise_exact_ratio(shape, dims):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    noisy = rb.gaussian_noise(x, 0.5, torch.Generator().manual_seed(2), clip=False)
    ratio = torch.linalg.vector_norm(noisy - x, dim=dims) / torch.linalg.vector_norm(x, dim=dims)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5), atol=1e-5)
    clipped = rb.gaussian_noise(x, 0.5, torch.Generator().manual_seed(2))
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(clipped, noisy.clamp(0, 1))


def test_gaussian_noise_seeded_and_validated():
    x = torch.rand(4, 3, 8, 8)
    a = rb.gaussian_noise(x, generator=torch.Generator().manual_seed(0))
    b = rb.gaussian_noise(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.equal(rb.gaussian_noise(torch.zeros(2, 3, 4, 4), clip=False), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ConfigError):
        rb.gaussian_noise(x, ratio=-1)
    with pytest.raises(ConfigError):
        rb.gaussian_noise((x * 255).to(torch.uint8))


def test_blur_matches_bilinear_down_up():
    x = torch.rand(2, 3, 32, 32)
    down = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    expected = F.interpolate(down, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(rb.blur(x, 2), expected)
    assert rb.blur(x, 2).shape == x.shape
    const = torch.full((1, 3, 32, 32), 0.37)
    assert torch.allclose(rb.blur(const, 4), const, atol=1e-6)
    xt = torch.rand(T, 2, 3, 8, 8)
    assert torch.allclose(rb.blur(xt), torch.stack([rb.blur(xt[t]) for t in range(T)]))
    for bad in (0, 1.5, 64):
        with pytest.raises(ConfigError):
            rb.blur(x, bad)


def test_fgsm_matches_analytic_gradient():
    torch.manual_seed(0)
    model = RepeatLinear(48, 3, dtype=torch.float64)
    x = torch.rand(8, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    eps = 8 / 255
    # d CE / d x for logits = W x + b is W^T (softmax - onehot).
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ W.T + b, dim=1)
    grad = ((p - F.one_hot(y, 3).double()) @ W).view_as(x)
    expected = (x + eps * grad.sign()).clamp(0, 1)
    adv = rb.fgsm(model, x, y, eps)
    assert torch.equal(adv, expected)
    assert all(q.grad is None for q in model.parameters())
    assert torch.equal(rb.fgsm(model, x, y, 0.0), x)


def test_pgd_within_budget_and_lowers_accuracy():
    x, y = two_class_data(64)
    model = MeanModel()
    clean_acc = (rb.predict(model, x).argmax(1) == y).float().mean()
    eps = 0.2
    adv = rb.pgd(model, x, y, eps=eps, step=0.05, iters=10, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    adv_acc = (rb.predict(model, adv).argmax(1) == y).float().mean()
    assert clean_acc == 1.0 and adv_acc < 0.1

    lif = TinyLIF(48)
    xi, yi = image_data(32)
    lif.train()
    adv2 = rb.pgd(lif, xi, yi, eps=8 / 255, step=2 / 255, iters=5, random_start=False)
    assert (adv2 - xi).abs().max() <= 8 / 255 + 1e-6
    assert lif.training, "attacks must not change the model's mode"
    assert all(q.grad is None for q in lif.parameters())


def test_pgd_random_start_seeded():
    model = TinyLIF(48)
    x, y = image_data(8)
    a = rb.pgd(model, x, y, iters=2, generator=torch.Generator().manual_seed(3))
    b = rb.pgd(model, x, y, iters=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(rb.pgd(model, x, y, eps=0.0, iters=3), x)
    with pytest.raises(ConfigError):
        rb.pgd(model, x, y, step=0.0)
    with pytest.raises(ConfigError):
        rb.pgd(model, x, y, eps=-1.0)


def test_windowed_input():
    x = torch.rand(2, 3, 4, 4)
    d = torch.full_like(x, 0.1)
    w = rb.windowed_input(x, d, [1, 3], T)
    assert w.shape == (T, 2, 3, 4, 4)
    for t in range(T):
        assert torch.equal(w[t], x + d if t in (1, 3) else x)
    xt = torch.rand(T, 2, 3, 4, 4)
    dt = torch.rand(T, 2, 3, 4, 4)
    w2 = rb.windowed_input(xt, dt, [0], T)
    assert torch.equal(w2[0], xt[0] + dt[0]) and torch.equal(w2[1:], xt[1:])
    with pytest.raises(ConfigError):
        rb.windowed_input(x, d, [T], T)
    with pytest.raises(ConfigError):
        rb.windowed_input(x, d, [], T)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("steps", [[0, 1], [3]])
def test_windowed_attacks_perturb_only_chosen_timesteps(attack, steps):
    torch.manual_seed(0)
    model = TinyLIF(48, dtype=torch.float64)
    x, y = image_data(16)
    x = x.double()
    eps = 8 / 255
    if attack == "fgsm":
        adv = rb.fgsm(model, x, y, eps, timesteps=steps)  # T inferred from the model
    else:
        adv = rb.pgd(model, x, y, eps, 2 / 255, 3, generator=torch.Generator().manual_seed(0), timesteps=steps, T=T)
    assert adv.shape == (T, *x.shape)
    for t in range(T):
        if t in steps:
            assert not torch.equal(adv[t], x)
            assert (adv[t] - x).abs().max() <= eps + 1e-9
        else:
            assert torch.equal(adv[t], x)
    assert adv.min() >= 0 and adv.max() <= 1


def test_windowed_all_timesteps_equals_full_attack():
    torch.manual_seed(1)
    model = TinyLIF(48, dtype=torch.float64)
    x, y = image_data(16)
    x = x.double()
    full = rb.fgsm(model, x, y, 8 / 255)
    win = rb.fgsm(model, x, y, 8 / 255, timesteps=range(T), T=T)
    assert torch.equal(win, full.unsqueeze(0).expand(T, *full.shape))


def test_windowed_per_timestep_input_and_bad_steps():
    model = TinyLIF(48)
    x, y = image_data(4)
    xt = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    adv = rb.fgsm(model, xt, y, 8 / 255, timesteps=[2])
    assert adv.shape == xt.shape
    assert torch.equal(adv[[0, 1, 3]], xt[[0, 1, 3]])
    with pytest.raises(ConfigError, match="0-based"):
        rb.fgsm(model, x, y, timesteps=[T])
    with pytest.raises(ConfigError):
        rb.pgd(model, x, y, timesteps=[], T=T)
    with pytest.raises(ConfigError):
        rb.fgsm(model, xt, y, timesteps=[0], T=T + 1)


def test_evaluate_keys_and_reproducible():
    torch.manual_seed(0)
    model = TinyLIF(48)
    x, y = image_data(40)
    images = (x * 255).round().to(torch.uint8)
    model.train()
    kw = dict(batch_size=16, pgd_iters=3, progress=False)
    r1 = rb.evaluate(model, images, y, seed=5, **kw)
    r2 = rb.evaluate(model, images, y, seed=5, **kw)
    assert model.training, "evaluate must restore the model's mode"
    for key in ("clean", "gaussian", "blur", "fgsm", "pgd"):
        assert 0.0 <= r1[key] <= 1.0
    assert set(r1["drop"]) == {"gaussian", "blur", "fgsm", "pgd"}
    assert r1["drop"]["pgd"] == pytest.approx(r1["clean"] - r1["pgd"])
    assert r1["settings"]["pgd_random_start"] is True
    assert r1["settings"]["pgd_iters"] == 3 and r1["settings"]["n"] == 40
    assert isinstance(r1["warnings"], list)
    assert r1 == r2
    # uint8 input and the same pixels as floats give the same numbers.
    r3 = rb.evaluate(model, images.float() / 255, y, seed=5, **kw)
    assert {k: r3[k] for k in ("clean", "gaussian", "blur", "fgsm", "pgd")} == {
        k: r1[k] for k in ("clean", "gaussian", "blur", "fgsm", "pgd")
    }
    rw = rb.evaluate(model, images, y, seed=5, attack_timesteps=[0], **kw)
    assert rw["clean"] == r1["clean"] and rw["settings"]["attack_timesteps"] == [0]


def test_evaluate_input_validation():
    model = TinyLIF(48)
    x, y = image_data(8)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        rb.evaluate(model, x * 2 - 1, y, progress=False)
    with pytest.raises(ConfigError, match="same length"):
        rb.evaluate(model, x, y[:4], progress=False)
    with pytest.raises(ConfigError):
        rb.evaluate(model, x, y.float(), progress=False)


def test_gradient_masking_check():
    x, y = two_class_data(64)
    eps_list = (0, 8 / 255, 32 / 255, 64 / 255)
    masked = rb.eps_sweep(StepModel(), x, y, eps_list, batch_size=32, pgd_iters=5, progress=False)
    assert [e for e, _ in masked] == pytest.approx(list(eps_list))
    assert masked[-1][1] == 1.0
    msg = rb.check_gradient_masking(masked)
    assert msg is not None and "gradient masking" in msg

    normal = rb.eps_sweep(MeanModel(), x, y, eps_list, batch_size=32, pgd_iters=5, progress=False)
    assert normal[0][1] == 1.0 and normal[-1][1] == 0.0
    assert rb.check_gradient_masking(normal) is None
    fg = rb.eps_sweep(MeanModel(), x, y, eps_list, attack="fgsm", progress=False)
    assert rb.check_gradient_masking(fg) is None

    assert "rises" in rb.check_gradient_masking([(0, 0.9), (1 / 255, 0.5), (2 / 255, 0.7)])
    # Small eps only and a model that is already useless: nothing to flag.
    assert rb.check_gradient_masking([(0, 0.9), (2 / 255, 0.8)]) is None
    assert rb.check_gradient_masking([(0, 0.05), (64 / 255, 0.05)]) is None
    with pytest.raises(ConfigError):
        rb.eps_sweep(MeanModel(), x, y, attack="cw", progress=False)


def test_windowed_attack_report():
    torch.manual_seed(0)
    model = TinyLIF(48)
    x, y = image_data(16)
    rep = rb.windowed_attack_report(model, x, y, 2, pgd_iters=2, batch_size=8, progress=False)
    assert rep["T"] == T and rep["k"] == 2
    assert rep["first_timesteps"] == [0, 1] and rep["last_timesteps"] == [2, 3]
    for key in ("clean", "all", "first_k", "last_k"):
        assert 0.0 <= rep[key] <= 1.0
    with pytest.raises(ConfigError):
        rb.windowed_attack_report(model, x, y, T + 1, progress=False)


def test_to_markdown():
    res = {"clean": 0.9204, "gaussian": 0.6901, "blur": 0.5811, "fgsm": 0.7722, "pgd": 0.7463}
    md = rb.to_markdown(res, name="low alpha")
    lines = md.strip().splitlines()
    assert lines[0] == "| model | clean | Gaussian noise | Blur | FGSM | PGD |"
    assert lines[2] == "| low alpha | 92.04 | 69.01 (-23.03) | 58.11 (-33.93) | 77.22 (-14.82) | 74.63 (-17.41) |"
    table = rb.to_markdown_table({"a": res, "b": {**res, "pgd": None}})
    assert len(table.strip().splitlines()) == 4 and "n/a" in table
