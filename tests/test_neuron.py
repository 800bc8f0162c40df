import math
import warnings

import pytest
import torch

from spiketide import neuron
from spiketide.errors import ConfigError
from spiketide.neuron import LIF, lif_scan, spike


def reference(x, tau, vth=1.0):
    """Eq. 1 written out by hand with Python floats."""
    u, out = 0.0, []
    for xt in x:
        u = (1 - 1 / tau) * u + xt / tau
        s = 1.0 if u >= vth else 0.0
        out.append(s)
        u = 0.0 if s else u
    return out


@pytest.mark.parametrize("tau", [2.0, 0.75, 4.0, 1.0])
def test_lif_matches_hand_computed_sequence(tau):
    x = [1.5, 0.8, 2.5, 0.0, 3.0, -1.0, 2.2, 2.2]
    s = LIF(tau=tau)(torch.tensor(x, dtype=torch.float64).view(-1, 1))
    assert s.view(-1).tolist() == reference(x, tau)


def test_tau_two_exact_values():
    # tau=2: U1 = 0.75 (no spike), U2 = 0.375 + 0.75 = 1.125 -> spike, reset; U3 = 0 + 0.5 = 0.5
    s = LIF(tau=2.0)(torch.tensor([[1.5], [1.5], [1.0]]))
    assert s.view(-1).tolist() == [0.0, 1.0, 0.0]


def test_tau_075_negative_leak():
    # leak = 1 - 1/0.75 = -1/3: U1 = 4/3*0.6 = 0.8; U2 = -0.8/3 + 4/3*0.9 = 0.9333; U3 = -0.3111 + 4/3*1.2 = 1.2889 -> spike
    s = LIF(tau=0.75)(torch.tensor([[0.6], [0.9], [1.2], [0.5]], dtype=torch.float64))
    assert s.view(-1).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_threshold_is_inclusive_and_dtype_kept():
    x = torch.tensor([[2.0]], dtype=torch.float64)  # U = 1.0 exactly at tau = 2
    assert LIF(tau=2.0)(x).item() == 1.0
    assert LIF()(torch.ones(3, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_surrogate_gradient_formula():
    x = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    spike(x).sum().backward()
    expected = 1.0 / (1.0 + (math.pi * x.detach()) ** 2)
    torch.testing.assert_close(x.grad, expected)
    # it is the derivative of (1/pi) arctan(pi x) + 1/2
    y = x.detach().clone().requires_grad_()
    (torch.atan(math.pi * y) / math.pi + 0.5).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_backward_through_time_with_detached_reset():
    # Two steps, tau=2: U1 = x1/2, U2 = U1(1-S1)/2 + x2/2. With no spike at t=1 the chain is visible.
    x = torch.tensor([[0.4], [0.6]], dtype=torch.float64, requires_grad=True)
    s = LIF(tau=2.0)(x)
    s[1].sum().backward()
    u2 = 0.2 / 2 + 0.3
    sg = 1 / (1 + (math.pi * (u2 - 1)) ** 2)
    torch.testing.assert_close(x.grad.view(-1), torch.tensor([sg * 0.5 * 0.5, sg * 0.5], dtype=torch.float64))


@pytest.mark.parametrize("tau", [0.0, float("nan"), float("inf")])
def test_invalid_tau_rejected(tau):
    with pytest.raises(ConfigError, match="tau"):
        LIF(tau=tau)


def test_stateless_between_calls():
    lif = LIF()
    x = torch.rand(5, 3, 4) * 3
    torch.testing.assert_close(lif(x), lif(x), rtol=0, atol=0)


@pytest.mark.parametrize("tau,detach_reset", [(2.0, True), (0.75, False)])
def test_fast_path_equals_step_loop(tau, detach_reset):
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 3, 5, 5, dtype=torch.float64) * 2).requires_grad_()
    w = torch.randn_like(x)
    s0 = lif_scan(x, tau, 1.0, detach_reset)
    (g0,) = torch.autograd.grad((s0 * w).sum(), x)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="spiketide")  # a silent fallback would void this test
        s1 = LIF(tau, detach_reset=detach_reset, fast=True)(x)
    (g1,) = torch.autograd.grad((s1 * w).sum(), x)
    assert torch.equal(s0, s1)
    assert s0.sum() > 0 and (s0 == 0).any()
    assert ((g0 - g1).abs().max() / g0.abs().max()).item() < 1e-6


def test_fast_path_falls_back_cleanly(monkeypatch):
    def broken(name):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(neuron, "_compiled_fn", broken)
    x = torch.rand(4, 2, 3) * 3
    lif = LIF(fast=True)
    with pytest.warns(RuntimeWarning, match="plain step loop"):
        s = lif(x)
    assert torch.equal(s, lif_scan(x, 2.0))
    assert lif._compile_failed  # this module stops retrying; other modules and processes are untouched
    assert not LIF(fast=True)._compile_failed


def test_one_compiled_graph_per_T_for_every_layer_shape():
    """The fused scan runs on [T, N]: layers of any shape and batch size share one forward and one backward graph
    per T, also a layer whose channel count equals T (dynamic shapes would tie the two sizes and recompile)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    lif = LIF(fast=True)
    for shape in [(6, 4, 6, 5, 5), (6, 4, 16, 3, 3), (6, 8, 6, 5, 5), (6, 3, 32, 2, 2), (6, 4, 10)]:
        x = torch.randn(shape, requires_grad=True)
        s = lif(x)
        s.backward(torch.ones_like(s))
        assert s.shape == x.shape and x.grad.shape == x.shape
    assert counters["stats"]["unique_graphs"] == 2
