"""Built-in SNN architectures: shapes, gradients, statelessness, parameter counts, block names, registry errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spiketide.models as models
from spiketide.errors import ConfigError

T, B = 2, 2
NAMES = models.available()
# (in_channels, image_size): Fashion-MNIST and CIFAR/SVHN geometry
GEOMETRIES = [(1, 28), (3, 32)]

# Documented parameter counts at 10 classes (see each model's docstring).
PARAM_COUNTS = {
    ("resnet19", 3): 26_108_042,  # the paper's ResNet-19 (authors' public layout)
    ("resnet19", 1): 26_105_738,
    ("resnet34", 3): 21_282_122,
    ("resnet34", 1): 21_280_970,
    ("vgg16", 3): 14_724_042,
    ("vgg16", 1): 14_722_890,
    ("alexnet", 3): 5_434_602,
    ("alexnet", 1): 5_432_874,
    ("convnet", 1): 66_154,
    ("convnet", 3): 66_730,
}

# Reduced width per model for the width tests: 1/8 of the paper's nets, 1/4 of the already small convnet.
SMALL_WIDTH = {"resnet19": 0.125, "resnet34": 0.125, "vgg16": 0.125, "alexnet": 0.125, "convnet": 0.25}
# Parameter counts at width 1/8, 1x28x28 input, 10 classes (CPU-scale versions of the paper's topologies).
EIGHTH_WIDTH_COUNTS = {"resnet19": 410_362, "resnet34": 335_010, "vgg16": 231_602, "alexnet": 86_862}


@pytest.fixture(autouse=True)
def _plain_lif_loop(monkeypatch):
    """Run the LIF step loop, not the compiled scan: compiling dozens of shapes would dominate the runtime."""
    monkeypatch.setenv("SPIKETIDE_NO_COMPILE", "1")


def _build(name: str, in_channels: int = 3, image_size: int = 32, **kw):
    torch.manual_seed(0)
    return models.create(name, num_classes=10, timesteps=T, tau=2.0, in_channels=in_channels,
                         image_size=image_size, **kw)


def _images(*shape: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def test_expected_models_registered():
    assert {"convnet", "resnet19", "resnet34", "vgg16", "alexnet"} <= set(NAMES)


@pytest.mark.parametrize("in_channels,image_size", GEOMETRIES)
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_static_and_per_timestep(name, in_channels, image_size):
    model = _build(name, in_channels, image_size).eval()
    with torch.no_grad():
        y_static = model(_images(B, in_channels, image_size, image_size))
        y_seq = model(_images(T, B, in_channels, image_size, image_size))
    assert y_static.shape == (T, B, 10)
    assert y_seq.shape == (T, B, 10)
    assert torch.isfinite(y_static).all() and torch.isfinite(y_seq).all()


@pytest.mark.parametrize("reduced", [False, True], ids=["full", "narrow"])
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_nonzero_gradient(name, reduced):
    # Train-mode BN normalises every pre-activation, so a fair share of neurons crosses threshold. A batch of
    # 8 (16 samples for BatchNorm1d after folding T) lets normalised FC currents reach the threshold at all:
    # with only 4 samples a standardised value never exceeds 1.5, short of the 2 a tau=2 neuron needs at t=1.
    width = SMALL_WIDTH.get(name, 0.25) if reduced else 1.0
    model = _build(name, 3, 16, width=width).train()  # 16x16 keeps the big models quick; every layer still runs
    x = _images(8, 3, 16, 16)
    y = model(x)
    loss = F.cross_entropy(y.mean(0), torch.arange(8) % 10)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"{name} (width {width}): parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_stateless_between_calls(name):
    model = _build(name, 3, 16).eval()
    x = _images(B, 3, 16, 16)
    with torch.no_grad():
        a = model(x)
        b = model(x)
        # a different input in between must not leak into the next call either
        model(_images(B, 3, 16, 16, seed=5))
        c = model(x)
    assert torch.equal(a, b)
    assert torch.equal(a, c)


@pytest.mark.parametrize("name,in_channels", sorted(PARAM_COUNTS))
def test_parameter_count(name, in_channels):
    if name not in NAMES:
        pytest.skip(f"{name} not registered")
    model = models.create(name, num_classes=10, timesteps=T, in_channels=in_channels,
                          image_size=32 if in_channels == 3 else 28)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[(name, in_channels)]


def test_resnet19_matches_paper_count():
    model = models.create("resnet19", num_classes=10, timesteps=T)
    assert sum(p.numel() for p in model.parameters()) == 26_108_042


def test_every_registered_model_has_a_documented_count():
    assert {n for n, _ in PARAM_COUNTS} >= set(NAMES)


def _owners(param_name: str, prefixes) -> list[str]:
    return [p for p in prefixes if param_name == p or param_name.startswith(p + ".")]


@pytest.mark.parametrize("width", [1.0, 0.125, 1e-3])
@pytest.mark.parametrize("name", NAMES)
def test_block_names_partition_parameters(name, width):
    model = _build(name, width=width)
    prefixes = tuple(type(model).block_names)
    assert prefixes, f"{name} defines no block_names"
    assert len(set(prefixes)) == len(prefixes)
    used = set()
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owners = _owners(pname, prefixes)
        assert len(owners) == 1, f"{name}: parameter {pname} belongs to {owners} (must be exactly one block)"
        used.add(owners[0])
    assert used == set(prefixes), f"{name}: blocks without parameters: {set(prefixes) - used}"


def test_resnet19_block_names():
    assert models.create("resnet19", num_classes=10, timesteps=T).block_names == (
        "stem", "layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer3.1", "fc",
    )


def test_create_errors():
    with pytest.raises(ConfigError):
        models.create("no-such-net", num_classes=10, timesteps=T)
    with pytest.raises(ConfigError):
        models.create("resnet19", num_classes=10, timesteps=0)
    with pytest.raises(ConfigError):
        models.create("resnet19", num_classes=10, timesteps=T, tau=0)
    with pytest.raises(ConfigError):
        models.create("vgg16", num_classes=10, timesteps=T, tau=0.0)


def test_wrong_image_size_is_refused():
    from spiketide.errors import ConfigError

    model = models.create("convnet", num_classes=10, timesteps=T, in_channels=1, image_size=28, fast_lif=False)
    with pytest.raises(ConfigError, match=r"\[B, 1, 28, 28\]"):
        model(torch.rand(2, 1, 32, 32))  # adaptive pooling would otherwise return meaningless logits
    with pytest.raises(ConfigError, match="per-timestep"):
        model(torch.rand(T + 1, 2, 1, 28, 28))


@pytest.mark.parametrize("in_channels,image_size", GEOMETRIES)
@pytest.mark.parametrize("name", NAMES)
def test_reduced_width_runs_with_about_width_squared_parameters(name, in_channels, image_size):
    width = SMALL_WIDTH.get(name, 0.25)
    full = _build(name, in_channels, image_size)
    model = _build(name, in_channels, image_size, width=width).eval()
    with torch.no_grad():
        y = model(_images(B, in_channels, image_size, image_size))
    assert y.shape == (T, B, 10) and torch.isfinite(y).all()
    assert model.width == width
    ratio = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in full.parameters())
    # conv/hidden-linear weights scale with width**2; BN, the stem and the head only with width
    assert 0.5 * width**2 < ratio < 2 * width**2, f"{name}: width {width} kept {ratio:.4f} of the parameters"


@pytest.mark.parametrize("name", sorted(EIGHTH_WIDTH_COUNTS))
def test_eighth_width_parameter_count(name):
    model = models.create(name, num_classes=10, timesteps=T, in_channels=1, image_size=28, width=1 / 8)
    assert sum(p.numel() for p in model.parameters()) == EIGHTH_WIDTH_COUNTS[name]


def test_resnet19_eighth_width_channels():
    model = models.create("resnet19", num_classes=10, timesteps=T, width=0.125)
    assert model.stem[0].in_channels == 3 and model.stem[0].out_channels == 16
    assert [getattr(model, f"layer{s}")[0].conv1.out_channels for s in (1, 2, 3)] == [32, 64, 64]
    assert model.fc.in_features == 64 and model.fc.out_features == 10


@pytest.mark.parametrize("name", NAMES)
def test_tiny_width_keeps_at_least_one_channel(name):
    model = _build(name, 1, 28, width=1e-6).eval()
    assert all(p.numel() > 0 for p in model.parameters())
    with torch.no_grad():
        assert model(_images(B, 1, 28, 28)).shape == (T, B, 10)


def test_default_width_is_the_documented_model():
    a = models.create("alexnet", num_classes=10, timesteps=T)
    b = models.create("alexnet", num_classes=10, timesteps=T, width=1)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("width", [0, 0.0, -1, float("nan"), float("inf"), "a", "0.5", None, True])
def test_bad_width_is_refused(width):
    with pytest.raises(ConfigError, match="width must be a finite number > 0"):
        models.create("convnet", num_classes=10, timesteps=T, width=width)


@pytest.mark.parametrize("shape", [(150, 16, 28, 28), (30, 6, 14, 6), (8, 3, 7, 7), (8, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_avg_pool_is_nn_avg_pool_bit_for_bit(shape, dtype):
    """The models' compiled 2x2 pool gives nn.AvgPool2d's numbers exactly, forward and backward, on analog inputs
    (not only spikes) and on views; odd sides go to nn.AvgPool2d (ceil mode: partial windows)."""
    from spiketide.models.base import AvgPool2d

    torch.manual_seed(0)
    for ceil_mode in (False, True):
        fast, plain = AvgPool2d(ceil_mode=ceil_mode, fast=True), torch.nn.AvgPool2d(2, ceil_mode=ceil_mode)
        x = torch.randn(2, *shape, dtype=dtype)[1]  # a view
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), plain(xb)
        g = torch.randn_like(yb)
        ya.backward(g), yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
        assert not fast._compile_failed


def test_models_pool_with_the_compiled_pool():
    from spiketide.models.base import AvgPool2d

    for name in ("convnet", "alexnet", "vgg16"):
        m = models.create(name, num_classes=10, timesteps=2, in_channels=1, image_size=28, width=0.0625)
        assert isinstance(m.pool, AvgPool2d) and repr(m.pool).startswith("AvgPool2d(kernel_size=2, stride=2")
        # fast_lif=False (--no-compile, the smoke scale) compiles nothing: the pool follows it like the LIF scan
        pools = [p for p in models.create(name, num_classes=10, timesteps=2, in_channels=1, image_size=28,
                                          width=0.0625, fast_lif=False).modules() if isinstance(p, AvgPool2d)]
        assert pools and not any(p.fast for p in pools)
