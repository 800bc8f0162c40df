import pytest
import torch
import torch.nn.functional as F

from spiketide.errors import ConfigError, ModelOutputError
from spiketide.evaluation import check_logits
from spiketide.losses import alpha_loss, horizon_logits, horizon_losses, make_loss, mean_output_ce


def test_horizon_logits_are_cumulative_means():
    out = torch.randn(5, 3, 4, dtype=torch.float64)
    h = horizon_logits(out)
    for t in range(5):
        torch.testing.assert_close(h[t], out[: t + 1].mean(0))


def test_horizon_losses_and_mean_output_ce():
    out, y = torch.randn(4, 6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    hl = horizon_losses(out, y)
    for t in range(4):
        torch.testing.assert_close(hl[t], F.cross_entropy(out[: t + 1].mean(0), y).float())
    torch.testing.assert_close(mean_output_ce(out, y), hl[-1])


def test_alpha_loss_value_and_gradient_sign():
    w = torch.zeros(3, requires_grad=True)
    out = (torch.eye(3) * 2).unsqueeze(0).repeat(2, 1, 1) + w  # [T=2, B=3, C=3]
    y = torch.arange(3)
    lt = horizon_losses(out, y)
    alpha_hi, alpha_lo = lt.max().item() + 1, lt.min().item() - 1
    torch.testing.assert_close(alpha_loss(out, y, alpha_hi), (alpha_hi - lt).mean())
    torch.testing.assert_close(alpha_loss(out, y, alpha_lo), (lt - alpha_lo).mean())
    p = torch.randn(2, 3, 3, requires_grad=True)
    (g_plain,) = torch.autograd.grad(horizon_losses(p, y).mean(), p)
    (g_low,) = torch.autograd.grad(alpha_loss(p, y, 0.0), p)  # every L_t > 0: plain descent
    (g_high,) = torch.autograd.grad(alpha_loss(p, y, 100.0), p)  # every L_t < alpha: ascent
    torch.testing.assert_close(g_low, g_plain)
    torch.testing.assert_close(g_high, -g_plain)


def test_make_loss_validation():
    assert make_loss("ce").alpha is None
    assert make_loss("alpha", 0.01).alpha == 0.01
    with pytest.raises(ConfigError):
        make_loss("alpha")
    with pytest.raises(ConfigError):
        make_loss("hinge")


def test_check_logits_shapes():
    check_logits(torch.zeros(2, 3, 4), 3, 4)
    with pytest.raises(ModelOutputError, match=r"\[T, 3, C\]"):
        check_logits(torch.zeros(3, 4), 3)
    with pytest.raises(ModelOutputError, match="tuple"):
        check_logits((torch.zeros(2, 3, 4),), 3)


def test_per_timestep_ce_and_tet_equal_hand_computed_values():
    from spiketide.losses import per_timestep_ce, tet_loss

    out = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]]], dtype=torch.float64)  # [T=2, B=2, C=2]
    y = torch.tensor([0, 1])
    ce = lambda logits, k: -torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)[k]  # noqa: E731
    per_t = [(ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2, (ce([1.0, 1.0], 0) + ce([3.0, 0.0], 1)) / 2]
    expected_ce = (per_t[0] + per_t[1]) / 2
    torch.testing.assert_close(per_timestep_ce(out, y), expected_ce.float())
    # MSE to phi = 1 per sample over classes, then mean over batch and time: ((1+1)/2 + (1+0)/2 + 0 + (4+1)/2) / 4
    mse = torch.tensor(((1 + 1) / 2 + (1 + 0) / 2 + (0 + 0) / 2 + (4 + 1) / 2) / 4)
    torch.testing.assert_close(tet_loss(out, y, 0.25), (0.75 * expected_ce + 0.25 * mse).float())
    torch.testing.assert_close(tet_loss(out, y, 0.0), per_timestep_ce(out, y))
    assert make_loss("per-timestep").name == "per-timestep" and make_loss("tet", tet_lambda=0.05).tet_lambda == 0.05
    for bad in (None, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="tet-lambda"):
            make_loss("tet", tet_lambda=bad)
