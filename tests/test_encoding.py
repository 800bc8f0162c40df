"""Poisson (rate) encoding: the right rate, reproducible draws, a stateless model, gradients through the rate."""

import pytest
import torch

from spiketide import models
from spiketide.errors import ConfigError
from spiketide.fisher import temporal_fisher
from spiketide.models.base import poisson_spikes
from spiketide.robustness import fgsm


def _net(encoding="poisson", seed=0):
    torch.manual_seed(0)
    return models.create("convnet", num_classes=10, timesteps=4, in_channels=1, image_size=12, widths=(4, 8, 8),
                         fast_lif=False, encoding=encoding, encoding_seed=seed).double()


def test_spikes_have_the_pixel_rate_and_are_reproducible():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64).expand(20000, 5)
    s = poisson_spikes(p, torch.Generator().manual_seed(3))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(s.mean(0), p[0], atol=0.01, rtol=0)  # 4 standard errors at p = 0.5
    assert s[:, 0].sum() == 0 and s[:, 4].sum() == 20000
    assert torch.equal(s, poisson_spikes(p, torch.Generator().manual_seed(3)))
    assert not torch.equal(s, poisson_spikes(p, torch.Generator().manual_seed(4)))
    shared = poisson_spikes(torch.full((5, 3, 2), 0.5), torch.Generator().manual_seed(3), shared=True)  # [T, B, .]
    assert torch.equal(shared[:, 0], shared[:, 2])  # one pattern for every image of the batch


def test_model_is_stateless_and_draws_from_the_generator_when_given():
    net = _net().eval()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(net(x), net(x))  # seeded at every call: no hidden state
    a = net.encode(x)  # the stem's currents from the spikes
    assert torch.equal(a, net.encode(x)) and not torch.equal(a, _net(seed=1).eval().encode(x))
    torch.testing.assert_close(net.encode(x[1:2])[:, 0], a[:, 1])  # an image's spikes do not depend on its batch
    g = torch.Generator().manual_seed(7)
    first, second = net.encode(x, g), net.encode(x, g)
    assert not torch.equal(first, second)  # training draws fresh spikes from the run's generator
    assert torch.equal(first, net.encode(x, torch.Generator().manual_seed(7)))


def test_gradients_flow_through_the_rate_and_fisher_is_deterministic():
    net = _net().eval()
    x = torch.rand(6, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0  # straight-through: attacks see the rate
    y = torch.randint(0, 10, (6,))
    assert not torch.equal(fgsm(net, x.detach(), y, 8 / 255), x.detach())
    p1 = temporal_fisher(net, x.detach(), y, batch_size=3)
    p2 = temporal_fisher(net, x.detach(), y, batch_size=6)
    torch.testing.assert_close(p1.trace, p2.trace)  # an image's spikes do not depend on its batch
    assert torch.equal(p1.trace, temporal_fisher(net, x.detach(), y, batch_size=3).trace)


def test_unknown_encoding_is_refused():
    with pytest.raises(ConfigError, match="unknown encoding 'rate'"):
        models.create("convnet", num_classes=10, timesteps=2, in_channels=1, image_size=28, encoding="rate")


def test_poisson_model_falls_to_zero_under_the_eps_sweep():
    """No gradient masking: the straight-through rate gradient lets PGD break a Poisson model that has learned."""
    from spiketide.losses import mean_output_ce
    from spiketide.robustness import check_gradient_masking, eps_sweep

    torch.manual_seed(0)
    net = models.create("convnet", num_classes=2, timesteps=4, in_channels=1, image_size=12, widths=(4, 8, 8),
                        fast_lif=False, encoding="poisson")
    y = torch.arange(64) % 2
    x = (0.15 + 0.7 * y.view(-1, 1, 1, 1) + 0.1 * torch.rand(64, 1, 12, 12)).clamp(0, 1)  # dark vs bright
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        opt.zero_grad()
        mean_output_ce(net(x, generator=g), y).backward()
        opt.step()
    sweep = eps_sweep(net, x, y, [0.0, 0.1, 0.3, 1.0], random_start=False, progress=False)  # the gradient alone
    accs = [a for _, a in sweep]
    assert accs[0] >= 0.9  # it has learned
    assert accs[-1] == 0.0 and check_gradient_masking(sweep) is None
