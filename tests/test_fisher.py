"""Temporal Fisher information (Eq. 3-7): exactness against brute force, the fallback, Eq. 7,
per-layer parts, state restoration and validation. Tiny float64 models; the plain LIF loop."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spiketide.errors import ConfigError, ModelOutputError
from spiketide.evaluation import to_float
from spiketide.fisher import (
    FisherProfile,
    brute_force_fisher,
    cumulative_share,
    engine,
    horizon_for_share,
    information_centroid,
    temporal_fisher,
)
from spiketide.fisher.measurement import draw_uniforms, true_labels
from spiketide.fisher.profile import read_profiles
from spiketide.losses import horizon_logits
from spiketide.models import create
from spiketide.neuron import lif_scan, spike

RTOL = 1e-6


# ----------------------------------------------------------------------------------------------
# models


def small_convnet(T: int = 3, C: int = 5) -> nn.Module:
    torch.manual_seed(0)
    m = create("convnet", num_classes=C, timesteps=T, in_channels=1, image_size=12, widths=(4, 8, 8),
               fast_lif=False).double()
    # non-trivial BN statistics and enough drive that every layer spikes and carries gradient
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(2.0, 4.0)
            mod.bias.data.uniform_(0.3, 1.0)
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m


class LoopMLP(nn.Module):
    """snnTorch style: its own LIF loop, Linear/LayerNorm called once per timestep on [B, F]."""

    def __init__(self, T: int = 4, fin: int = 12, hidden: int = 10, C: int = 4):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(fin, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros(x.shape[0], self.fc1.out_features, dtype=x.dtype)
        outs = []
        for t in range(self.T):
            cur = self.ln(self.fc1(x * (1.0 + 0.2 * t)))
            mem = 0.5 * mem + cur
            s = spike(mem - 0.5)
            mem = mem * (1.0 - s.detach())
            outs.append(self.fc2(s))
        return torch.stack(outs)


class TimeMajorNet(nn.Module):
    """Conv1d (reflect padding, dilation) + BatchNorm1d on the folded [T*B, C, L] batch, a LIF scan,
    GroupNorm, a grouped strided Conv2d, and a Linear on [T, B, F]."""

    def __init__(self, T: int = 3, C: int = 4):
        super().__init__()
        self.T = T
        self.conv = nn.Conv1d(2, 6, 3, padding=2, dilation=2, padding_mode="reflect")
        self.bn = nn.BatchNorm1d(6)
        self.gn = nn.GroupNorm(2, 6)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(4, C)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(1.5, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 2, L]
        T, B, L = self.T, x.shape[0], x.shape[-1]
        scale = torch.linspace(0.6, 1.4, T, dtype=x.dtype).view(T, 1, 1, 1)
        z = (x.unsqueeze(0) * scale).flatten(0, 1)  # time-major [T*B, 2, L]
        z = self.bn(self.conv(z))
        s = lif_scan(z.view(T, B, 6, L), tau=2.0, v_threshold=0.5)
        s = self.gn(s.flatten(0, 1))  # [T*B, 6, L]
        s = self.conv2(s.view(T * B, 6, 2, L // 2))  # [T*B, 4, 1, L/4]
        return self.fc(s.mean((-2, -1)).view(T, B, 4))  # Linear on [T, B, F]


class ResidualNet(nn.Module):
    """A module output consumed twice (residual) and a Linear called on the folded [T*B, F] batch."""

    def __init__(self, T: int = 3):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        T, B = self.T, x.shape[0]
        z = self.fc1(x.unsqueeze(0) * torch.linspace(0.5, 1.5, T, dtype=x.dtype).view(T, 1, 1))  # [T, B, 8]
        s = lif_scan(z, tau=2.0, v_threshold=0.4)
        r = self.fc2(s.flatten(0, 1)).view(T, B, 8)
        s2 = lif_scan(r + z, tau=2.0, v_threshold=0.4)  # z feeds two consumers
        return self.head(s2.flatten(0, 1)).view(T, B, 3)


class ScaledNet(nn.Module):
    """A trainable parameter outside any supported module: needs the exact fallback."""

    def __init__(self, T: int = 3):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(8, 6)
        self.scale = nn.Parameter(torch.tensor(1.7))
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        z = self.fc1(x) * self.scale
        s = lif_scan(z.unsqueeze(0).expand(self.T, -1, -1).contiguous(), tau=2.0, v_threshold=0.3)
        return self.fc2(s)


class SharedWeightNet(nn.Module):
    """Uses fc1.weight a second time through F.linear: hooks alone would miss that use."""

    def __init__(self, T: int = 3):
        super().__init__()
        self.T = T
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        z = self.fc1(x) + 0.5 * F.linear(x.flip(-1), self.fc1.weight)
        s = lif_scan(z.unsqueeze(0).expand(self.T, -1, -1).contiguous(), tau=2.0, v_threshold=0.3)
        return self.fc2(s)


class StatefulNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.mem = None

    def forward(self, x):
        if self.mem is None or self.mem.shape != (x.shape[0], 3):
            self.mem = torch.zeros(x.shape[0], 3, dtype=x.dtype)
        outs = []
        for _ in range(2):
            self.mem = 0.5 * self.mem.detach() + self.fc(x)
            outs.append(self.mem)
        return torch.stack(outs)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


def no_warnings(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return fn(*a, **kw)


@pytest.fixture(scope="module")
def conv_data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    return x, y


@pytest.fixture(scope="module")
def conv_ref(conv_data):
    """Brute-force empirical Fisher of small_convnet() on conv_data (computed once)."""
    return brute_force_fisher(small_convnet(), *conv_data, per_layer=True)


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(3)
    m = LoopMLP().double()
    x = torch.randn(5, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    return m, x, y, brute_force_fisher(m, x, y)


# ----------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("estimator", ["empirical", "true", "batch"])
def test_convnet_matches_brute_force(conv_data, conv_ref, estimator):
    x, y = conv_data
    m = small_convnet()
    kw = {}
    if estimator == "true":
        m.eval()
        with torch.no_grad():
            h = horizon_logits(m(x))
        kw["labels"] = true_labels(h, draw_uniforms(3, 6, seed=7))  # the draws, fixed
    fast = no_warnings(temporal_fisher, m, x, y, estimator=estimator, batch_size=4, seed=7, per_layer=True)
    if estimator == "empirical":
        ref = conv_ref
    else:
        ref = brute_force_fisher(m, x, y, estimator=estimator, batch_size=4, seed=7, per_layer=True, **kw)
    assert rel(fast.trace, ref.trace) < RTOL
    for name, v in ref.per_layer.items():
        assert rel(fast.per_layer[name], v) < RTOL, name
    assert fast.num_samples == ref.num_samples == (4 if estimator == "batch" else 6)
    # every block really carries information (the comparison is not dominated by the head)
    assert all(float(v.min()) > 1e-8 for v in fast.per_layer.values())
    assert fast.trace.shape == (3,) and fast.stderr.shape == (3,)


@pytest.mark.parametrize("estimator", ["empirical", "true"])
def test_loop_mlp_matches_brute_force(estimator):
    torch.manual_seed(3)
    m = LoopMLP().double()
    x = torch.randn(7, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    fast = no_warnings(temporal_fisher, m, x, y, estimator=estimator, batch_size=5, seed=2, per_layer=True)
    ref = brute_force_fisher(m, x, y, estimator=estimator, seed=2, per_layer=True)
    assert rel(fast.trace, ref.trace) < RTOL
    assert set(fast.per_layer) == {"fc1", "ln", "fc2"}
    for k in fast.per_layer:
        assert rel(fast.per_layer[k], ref.per_layer[k]) < RTOL


def test_time_major_net_matches_brute_force():
    torch.manual_seed(4)
    m = TimeMajorNet().double()
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    # batch_size 3 == T: the Linear input [T, B, F] is ambiguous and must be resolved by the safety net
    fast = no_warnings(temporal_fisher, m, x, y, batch_size=3, per_layer=True)
    ref = brute_force_fisher(m, x, y, per_layer=True)
    assert rel(fast.trace, ref.trace) < RTOL
    for k in ref.per_layer:
        assert rel(fast.per_layer[k], ref.per_layer[k]) < RTOL, k


@pytest.mark.parametrize("mode,cache", [("gram", 2**30), ("gram", 0), ("materialize", 2**30), ("materialize", 0)])
def test_both_per_sample_rules_and_tiny_slices(conv_data, conv_ref, mlp_case, mode, cache):
    """Gram identity and materialised per-sample gradients, one sample per slice, with/without caching."""
    knobs = dict(rule=mode, chunk_bytes=1, cache_bytes=cache)
    fast = no_warnings(engine.per_sample_fisher, small_convnet(), *conv_data, batch_size=4, per_layer=True, **knobs)
    for k in conv_ref.per_layer:
        assert rel(fast.per_layer[k], conv_ref.per_layer[k]) < RTOL, k
    m, x, y, ref = mlp_case
    assert rel(no_warnings(engine.per_sample_fisher, m, x, y, **knobs).trace, ref.trace) < RTOL


def test_residual_net_matches_brute_force():
    torch.manual_seed(6)
    m = ResidualNet().double()
    x = torch.randn(6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    fast = no_warnings(temporal_fisher, m, x, y, batch_size=4, per_layer=True)
    ref = brute_force_fisher(m, x, y, per_layer=True)
    for k in ref.per_layer:
        assert rel(fast.per_layer[k], ref.per_layer[k]) < RTOL, k
    assert all(float(v.min()) > 0 for v in fast.per_layer.values())


def test_convolution_backward_stops_at_the_horizon(conv_data, monkeypatch):
    """The folded convolutions' backward runs only on the rows of timesteps up to the horizon."""
    rows = []
    orig = engine.nonzero_rows

    def spy(go, k, B):
        r = orig(go, k, B)
        rows.append(r // B)
        return r

    monkeypatch.setattr(engine, "nonzero_rows", spy)
    x, y = conv_data
    m = small_convnet(T=3)
    fast = no_warnings(temporal_fisher, m, x, y)
    assert rows[:6] == [1, 1, 2, 2, 3, 3]  # block2 and block1 convolutions for horizons 1, 2, 3
    rows.clear()
    slow = engine.per_sample_fisher(m, x, y, tail_skip=False)
    assert not rows
    assert rel(fast.trace, slow.trace) < 1e-12


def test_true_estimator_draws_are_seeded(conv_data):
    x, y = conv_data
    m = small_convnet()
    a = temporal_fisher(m, x, y, estimator="true", seed=11, batch_size=4)
    b = temporal_fisher(m, x, y, estimator="true", seed=11, batch_size=6)  # draws do not depend on batching
    c = temporal_fisher(m, x, y, estimator="true", seed=12)
    assert rel(a.trace, b.trace) < RTOL
    assert not torch.allclose(a.trace, c.trace)


def test_batch_estimator_is_mean_gradient_norm(conv_data):
    x, y = conv_data
    m = small_convnet()
    emp = temporal_fisher(m, x, y, estimator="empirical")
    one = temporal_fisher(m, x, y, estimator="batch", batch_size=1)
    full = temporal_fisher(m, x, y, estimator="batch", batch_size=6)
    assert rel(one.trace, emp.trace) < RTOL  # minibatches of one sample are Eq. 6
    assert torch.all(full.trace <= emp.trace + 1e-12)  # ||mean g||^2 <= mean ||g||^2
    assert full.num_samples == 6 and torch.isnan(full.stderr).all()


# ----------------------------------------------------------------------------------------------
# fallback


@pytest.mark.parametrize("cls", [ScaledNet, SharedWeightNet])
def test_fallback_is_exact_and_warns_once(cls):
    torch.manual_seed(5)
    m = cls().double()
    x = torch.randn(5, 8 if cls is ScaledNet else 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    with pytest.warns(RuntimeWarning, match="slower") as rec:
        fast = temporal_fisher(m, x, y, batch_size=2, per_layer=True)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    ref = brute_force_fisher(m, x, y, per_layer=True)
    assert rel(fast.trace, ref.trace) < RTOL
    if cls is ScaledNet:
        assert "<root>" in fast.per_layer  # the raw parameter sits on the root module
        assert "scale" in str(rec[0].message) or "ScaledNet" in str(rec[0].message)


# ----------------------------------------------------------------------------------------------
# Eq. 7, per-layer parts, serialisation


def test_information_centroid_hand_examples():
    assert information_centroid([1.0, 0.0, 0.0]) == 1.0
    assert information_centroid(torch.tensor([0.0, 0.0, 1.0])) == 3.0
    for T in (1, 4, 10):
        assert information_centroid(torch.ones(T)) == pytest.approx((T + 1) / 2)
    assert information_centroid([1.0, 3.0]) == pytest.approx((1 + 6) / 4)
    assert information_centroid([0.0, 0.0]) != information_centroid([0.0, 0.0])  # nan


def test_per_layer_sums_to_trace_and_uses_block_names(conv_data):
    x, y = conv_data
    m = small_convnet()
    p = temporal_fisher(m, x, y, per_layer=True)
    assert list(p.per_layer) == list(m.block_names)
    assert torch.allclose(sum(p.per_layer.values()), p.trace, rtol=1e-12)
    assert p.centroid == pytest.approx(information_centroid(p.trace))
    assert temporal_fisher(m, x, y).per_layer is None


def test_profile_round_trip(conv_data):
    x, y = conv_data
    p = temporal_fisher(small_convnet(), x, y, per_layer=True)
    d = json.loads(json.dumps(p.to_dict()))
    assert set(d) == {"trace", "stderr", "centroid", "estimator", "num_samples", "per_layer"}
    q = FisherProfile.from_dict(d)
    assert torch.allclose(q.trace, p.trace) and torch.allclose(q.stderr, p.stderr)
    assert q.centroid == p.centroid and q.estimator == "empirical" and q.num_samples == 6
    assert set(q.per_layer) == set(p.per_layer)
    assert "per_layer" not in temporal_fisher(small_convnet(), x, y).to_dict()
    # metrics lines read back as profiles, in epoch order; a block's centroid is Eq. 7 of its part (nan if absent)
    nan = {"trace": [None] * len(d["trace"]), "centroid": None}
    read = read_profiles([{"epoch": 5, "fisher": d}, {"epoch": 1}, {"epoch": 0, "fisher": nan}])
    assert [e for e, _ in read] == [0, 5] and math.isnan(read[0][1].centroid) and read[1][1].centroid == p.centroid
    block = next(iter(p.per_layer))
    assert read[1][1].block_centroid(block) == information_centroid(p.per_layer[block])
    assert math.isnan(read[1][1].block_centroid("no such block")) and math.isnan(read[0][1].block_centroid(block))


# ----------------------------------------------------------------------------------------------
# state restoration


def test_modes_grads_and_requires_grad_restored(conv_data):
    x, y = conv_data
    m = small_convnet()
    m.train()
    m.block1.eval()  # a mixed state must survive per submodule
    m.fc.bias.requires_grad_(False)
    for p in m.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {n: p.grad for n, p in m.named_parameters()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    bn_stats = m.stem[1].running_mean.clone()
    p1 = temporal_fisher(m, x, y, per_layer=True)
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    for n, p in m.named_parameters():
        assert p.grad is before[n] and torch.all(p.grad == 0.25)
    assert not m.fc.bias.requires_grad and m.fc.weight.requires_grad
    assert torch.equal(m.stem[1].running_mean, bn_stats)  # eval mode: running stats untouched
    ref = brute_force_fisher(m, x, y)  # the frozen bias does not count
    assert rel(p1.trace, ref.trace) < RTOL
    m.eval()
    temporal_fisher(m, x, y)
    assert not any(mod.training for mod in m.modules())


def test_uint8_inputs_are_scaled(conv_data):
    x, y = conv_data
    m = small_convnet()
    q = (x * 255).round().to(torch.uint8)
    a = temporal_fisher(m, q, y)
    b = temporal_fisher(m, to_float(q).double(), y)  # scaled as evaluation.to_float scales pixels
    assert torch.allclose(a.trace, b.trace, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# validation


def test_bad_arguments_raise_clear_errors(conv_data):
    x, y = conv_data
    m = small_convnet()
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        temporal_fisher(m, x, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        temporal_fisher(m, x, torch.tensor([0, 1, -1, 3, 4, 2]))
    with pytest.raises(ConfigError, match="len"):
        temporal_fisher(m, x, y[:4])
    with pytest.raises(ConfigError, match="empty"):
        temporal_fisher(m, x[:0], y[:0])
    with pytest.raises(ConfigError, match="estimator"):
        temporal_fisher(m, x, y, estimator="fisher-rao")
    with pytest.raises(ConfigError, match="integer"):
        temporal_fisher(m, x, y.double())


class BatchFirst(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).transpose(0, 1)  # [B, T, C]


class MeanOnly(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).mean(0)  # [B, C]


@pytest.mark.parametrize("wrap", [BatchFirst, MeanOnly])
def test_wrong_output_shape(conv_data, wrap):
    x, y = conv_data
    with pytest.raises(ModelOutputError, match=r"\[T, 6, C\]"):
        temporal_fisher(wrap(small_convnet()), x, y)


@pytest.mark.parametrize("estimator", ["empirical", "batch"])
def test_stateful_model_is_rejected(estimator):
    m = StatefulNet().double()
    x = torch.randn(4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    with pytest.raises(ModelOutputError, match="reset its neuron state"):
        temporal_fisher(m, x, y, estimator=estimator)


# ----------------------------------------------------------------------------------------------
# fixed bugs


class CancellingNet(nn.Module):
    """fc1.weight is used a second time, outside fc1, scaled per timestep by c_t with sum_t c_t = 0: the extra
    use cancels in the horizon-T output (the mean over all T) but not at the earlier horizons."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.register_buffer("c", torch.tensor([1.0, -2.0, 1.0]).view(3, 1, 1))

    def forward(self, x):
        s = lif_scan(self.fc1(x).unsqueeze(0).expand(3, -1, -1).contiguous(), tau=2.0, v_threshold=0.3)
        return self.fc2(s + self.c * F.linear(x, self.fc1.weight))


def test_safety_net_checks_every_horizon():
    """The old check (horizon T only) passed here and gave a wrong I_1 without a warning."""
    torch.manual_seed(8)
    m = CancellingNet().double()
    x = torch.randn(6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    rng = torch.random.get_rng_state()
    with pytest.warns(RuntimeWarning, match="do not add up"):
        fast = temporal_fisher(m, x, y, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the check's weights come from a private generator
    ref = brute_force_fisher(m, x, y)
    assert rel(fast.trace, ref.trace) < RTOL


class BatchStatsMLP(nn.Module):
    """BatchNorm1d on [B, F] without running statistics, called once per timestep."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        z = self.bn(self.fc(x))
        return self.head(lif_scan(z.unsqueeze(0).expand(3, -1, -1).contiguous(), tau=2.0, v_threshold=0.2))


@pytest.mark.parametrize("case", ["BatchNorm2d", "BatchNorm1d"])
def test_batchnorm_without_running_statistics_is_refused(conv_data, case):
    """Batch statistics in eval mode make a sample's output depend on its batch: refused, not mis-measured."""
    if case == "BatchNorm2d":
        m = small_convnet()
        m.stem[1] = nn.BatchNorm2d(4, track_running_stats=False).double()
        x, y = conv_data
    else:
        m = BatchStatsMLP().double()
        x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    for estimator in ("empirical", "true", "batch"):
        with pytest.raises(ConfigError, match=rf"{case}.*track_running_stats=True"):
            temporal_fisher(m, x, y, estimator=estimator)
    with pytest.raises(ConfigError, match="running statistics"):
        brute_force_fisher(m, x, y)


@pytest.mark.parametrize("estimator", ["empirical", "true", "batch"])
def test_per_timestep_inputs_match_brute_force(estimator):
    """Inputs [T, N, C, H, W] (windowed noise): samples on dim 1, batches sliced along it."""
    g = torch.Generator().manual_seed(9)
    x = torch.rand(3, 6, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    m = small_convnet()
    kw = {}
    if estimator == "true":
        m.eval()
        with torch.no_grad():
            kw["labels"] = true_labels(horizon_logits(m(x)), draw_uniforms(3, 6, seed=4))
    fast = no_warnings(temporal_fisher, m, x, y, estimator=estimator, batch_size=4, seed=4, per_layer=True)
    ref = brute_force_fisher(m, x, y, estimator=estimator, batch_size=4, seed=4, per_layer=True, **kw)
    assert rel(fast.trace, ref.trace) < RTOL
    for k in ref.per_layer:
        assert rel(fast.per_layer[k], ref.per_layer[k]) < RTOL, k
    assert fast.num_samples == ref.num_samples == (4 if estimator == "batch" else 6)
    with pytest.raises(ConfigError, match="dim 1"):
        temporal_fisher(m, x, y[:4])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(conv_data, bad):
    x, y = conv_data
    x = x.clone()
    x[2, 0, 3, 3] = bad
    m = small_convnet()
    for estimator in ("empirical", "true", "batch"):
        with pytest.raises(ConfigError, match="NaN or inf"):
            temporal_fisher(m, x, y, estimator=estimator)
    with pytest.raises(ConfigError, match="NaN or inf"):
        brute_force_fisher(m, x, y)
    # finite values outside [0, 1] are fine for a model that is not fed pixels
    torch.manual_seed(3)
    mlp = LoopMLP().double()
    x2 = 4.0 * torch.randn(5, 12, dtype=torch.float64)
    assert torch.isfinite(temporal_fisher(mlp, x2, torch.tensor([0, 1, 2, 3, 0])).trace).all()


@pytest.mark.parametrize("batch_size", [0, -2, True, 2.5, "4", None])
def test_batch_size_is_validated(conv_data, batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        temporal_fisher(small_convnet(), *conv_data, batch_size=batch_size)


def test_cumulative_share_and_horizon_for_share():
    assert cumulative_share([2.0, 1.0, 1.0]) == pytest.approx([0.5, 0.75, 1.0])
    assert horizon_for_share([2.0, 1.0, 1.0], 0.75) == 2
    assert horizon_for_share(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.75) == 3  # exact hit, despite rounding
    assert horizon_for_share([2.0, 1.0, 1.0], 1.0) == 3
    assert horizon_for_share([0.0, 0.0], 0.5) == 2  # nothing measured: no horizon can be dropped
    for bad in ([], [1.0, -1.0], [float("nan")], [[1.0]]):
        with pytest.raises(ConfigError):
            cumulative_share(bad)
    for q in (0, 1.5, True):
        with pytest.raises(ConfigError, match="q must"):
            horizon_for_share([1.0], q)


def test_import_stays_low_in_the_stack():
    import subprocess
    import sys

    code = ("import sys, spiketide.fisher; print(sorted(m for m in sys.modules if m.startswith('spiketide')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("train", "data", "cli", "runs", "robustness", "pruning", "callbacks"):
        assert f"spiketide.{name}'" not in loaded, name
