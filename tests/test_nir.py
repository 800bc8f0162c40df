"""NIR export and import (spiketide.nir, `spiketide export-nir`): every built-in model survives
to_nir -> nir.write -> nir.read -> from_nir with the same per-step logits, and other frameworks' importers
run the exported graphs to the same logits."""

import contextlib
import io

import numpy as np
import pytest
import torch
import torch.nn.utils.prune

nir = pytest.importorskip("nir")  # a guard only: the test extra installs nir==1.0.8

from conftest import train_tiny_run  # noqa: E402

from spiketide import cli, models  # noqa: E402
from spiketide import nir as snir  # noqa: E402
from spiketide.errors import ConfigError  # noqa: E402
from spiketide.fisher import temporal_fisher  # noqa: E402
from spiketide.models.base import poisson_spikes  # noqa: E402
from spiketide.neuron import LIF  # noqa: E402

T = 4

# (model, image size, channels, width): 28x28 exercises the ceil-mode pools on odd maps (7 -> 4)
CASES = [("convnet", 28, 1, 0.25), ("convnet", 32, 3, 0.25), ("resnet19", 16, 3, 1 / 16), ("resnet34", 12, 1, 1 / 16),
         ("vgg16", 28, 1, 1 / 16), ("vgg16", 32, 3, 1 / 16), ("alexnet", 28, 1, 1 / 16), ("alexnet", 32, 3, 1 / 16)]


def _ID(v):
    return f"w{v:g}" if isinstance(v, float) else str(v)


def _model(name, size, channels, width, encoding="direct", tau=2.0):
    """A float64 model whose every layer fires: BatchNorm statistics of its own activations, then a positive
    shift (at initialisation most layers stay silent and the logits would be the head's bias alone)."""
    torch.manual_seed(0)
    m = models.create(name, num_classes=10, timesteps=T, tau=tau, in_channels=channels, image_size=size, width=width,
                      mean=[0.3] * channels, std=[0.4] * channels, encoding=encoding).double()
    x = torch.rand(6, channels, size, size, dtype=torch.float64)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.momentum = None
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(0.2, 1.0)
    with torch.no_grad():
        m.train()(x)
    return m.eval(), x


def _rates(model, x):
    rates = []
    hooks = [m.register_forward_hook(lambda mod, i, o: rates.append(float(o.mean())))
             for m in model.modules() if isinstance(m, LIF)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / a.abs().max())


def _roundtrip(model, tmp_path, **kw):
    path = snir.write(tmp_path / "model.nir", snir.to_nir(model, **kw))
    return nir.read(path), snir.from_nir(nir.read(path), dtype=torch.float64)


@pytest.mark.parametrize("name,size,channels,width", CASES, ids=_ID)
def test_every_builtin_model_round_trips_to_the_same_logits(tmp_path, name, size, channels, width):
    model, x = _model(name, size, channels, width)
    rates = _rates(model, x)
    assert all(0.02 < r < 0.6 for r in rates), rates  # the spikes, not only the head's bias, make the logits
    graph, back = _roundtrip(model, tmp_path)
    with torch.no_grad():
        a, b = model(x), back(x)
        assert a.shape == b.shape == (T, 6, 10)
        assert float(a.std(0).mean()) > 1e-3  # the logits change over time
        assert _rel(a, b) <= 1e-6
        xt = torch.rand(T, *x.shape, dtype=torch.float64)  # per-timestep inputs [T, B, C, H, W]
        assert _rel(model(xt), back(xt)) <= 1e-6
    assert not any(isinstance(n, (nir.IF, nir.CubaLIF)) for n in graph.nodes.values())
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    assert len(lifs) == len(rates)
    if name.startswith("resnet"):  # residual sums: a block's last neuron has two incoming edges
        into = [b for _, b in graph.edges]
        assert sum(into.count(k) == 2 for k, n in graph.nodes.items() if isinstance(n, nir.LIF)) == \
            sum(len(getattr(model, f"layer{s}")) for s in range(1, model.num_stages + 1))


@pytest.mark.parametrize("name,size,channels", [("convnet", 32, 3), ("vgg16", 28, 1), ("alexnet", 32, 3)])
def test_sum_pooling_gives_the_same_logits(tmp_path, name, size, channels):
    model, x = _model(name, size, channels, 0.25 if name == "convnet" else 1 / 16)
    graph, back = _roundtrip(model, tmp_path, pooling="sum")
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert "SumPool2d" in kinds and "AvgPool2d" not in kinds
    with torch.no_grad():
        assert _rel(model(x), back(x)) <= 1e-6


def test_graph_layout_neurons_and_metadata(tmp_path):
    model, x = _model("convnet", 28, 1, 0.25, tau=0.75)  # tau < 1 (the paper's 0.75) maps like any other
    graph, back = _roundtrip(model, tmp_path, dt=1e-4)
    assert back.lif0.lif.tau == 0.75  # not 0.75e-4 / 1e-4 = 0.7499999999999999
    with torch.no_grad():
        assert _rel(model(x), back(x)) <= 1e-6
    kinds = [type(graph.nodes[k]).__name__ for k in ("input", "input_norm", "stem", "lif0", "pool0", "block1", "lif1",
                                                     "pool1", "block2", "lif2", "fc_flatten", "fc", "output")]
    assert kinds == ["Input", "Conv2d", "Conv2d", "LIF", "AvgPool2d", "Conv2d", "LIF", "AvgPool2d", "Conv2d", "LIF",
                     "Flatten", "Affine", "Output"]
    norm = graph.nodes["input_norm"]  # (x - 0.3) / 0.4 as a 1x1 conv
    np.testing.assert_allclose(norm.weight.reshape(-1), [1 / 0.4])
    np.testing.assert_allclose(norm.bias, [-0.3 / 0.4])
    lif = graph.nodes["lif0"]
    assert lif.tau.shape == (8, 28, 28)
    for field, value in (("tau", 0.75 * 1e-4), ("r", 1.0), ("v_leak", 0.0), ("v_threshold", 1.0), ("v_reset", 0.0)):
        assert np.all(getattr(lif, field) == value), field
    assert graph.nodes["fc"].weight.shape == (10, 16 * 7 * 7)  # adaptive pool 7 -> 4 folded into the head
    meta = graph.metadata
    assert float(meta["dt"]) == 1e-4 and int(meta["timesteps"]) == T and float(meta["tau"]) == 0.75
    assert meta["model"] == "convnet" and "mean of o_1..o_T" in meta["readout"]


def test_odd_maps_pool_through_a_conv_and_scale(tmp_path):
    """vgg16 at 28x28 pools 7 -> 4 in ceil mode before a conv: the partial border windows need a Scale node."""
    model, x = _model("vgg16", 28, 1, 1 / 16)
    graph, back = _roundtrip(model, tmp_path)
    scales = [k for k, n in graph.nodes.items() if isinstance(n, nir.Scale)]
    assert scales == ["pool7_border"]
    np.testing.assert_array_equal(graph.nodes["pool7_border"].scale[0, :, 3], [2, 2, 2, 4])


def test_pruned_model_exports_the_weights_in_force(tmp_path):
    """torch.nn.utils.prune recomputes `weight` only in forward; a checkpoint loaded into a pruned model leaves it
    stale until then, and the export must still take weight_orig * weight_mask."""
    model, x = _model("convnet", 28, 1, 0.25)
    for mod in (model.stem[0], model.block1[0], model.fc):
        torch.nn.utils.prune.random_unstructured(mod, "weight", amount=0.3)
    state = {k: v * 1.2 if k.endswith("weight_orig") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # what load_model does; `weight` still holds the old values
    graph, back = _roundtrip(model, tmp_path)
    with torch.no_grad():
        assert _rel(model(x), back(x)) <= 1e-6
    assert (graph.nodes["block1"].weight == 0).mean() > 0.25


def test_poisson_model_exports_its_spiking_input(tmp_path):
    model, x = _model("convnet", 28, 1, 0.25, encoding="poisson")
    graph, back = _roundtrip(model, tmp_path)
    assert "input_norm" not in graph.nodes and graph.metadata["encoding"] == "poisson"
    spikes = poisson_spikes(x.expand(T, *x.shape), torch.Generator().manual_seed(model.encoding_seed), shared=True)
    with torch.no_grad():
        assert _rel(model(x), back(spikes)) <= 1e-6


def test_imported_model_is_stateless_and_trains_like_the_original(tmp_path):
    model, x = _model("resnet19", 16, 3, 1 / 16)
    _, back = _roundtrip(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(back(x), back(x))  # no neuron state survives a call
    w = torch.randn(T, 6, 10, dtype=torch.float64)
    grads = []
    for m in (model, back):  # BatchNorm folded in eval mode is a reparametrisation: same input gradient
        xi = x.clone().requires_grad_(True)
        (m(xi) * w).sum().backward()
        grads.append(xi.grad)
    assert grads[0].abs().max() > 0 and _rel(grads[0], grads[1]) <= 1e-6  # arctan surrogate, detached reset
    assert not back.input_norm.weight.requires_grad  # the normalisation is not a weight to train
    assert back.stem.weight.requires_grad and back.stem.weight.grad.abs().max() > 0
    assert back.block_names[0] == "stem" and "fc" in back.block_names
    prof = temporal_fisher(back, x, torch.arange(6), per_layer=True)
    assert prof.trace.shape == (T,) and bool(torch.isfinite(prof.trace).all()) and float(prof.trace.sum()) > 0


def _hand_graph(**lif):
    rng = np.random.default_rng(0)
    n = 5
    params = dict(tau=rng.uniform(1.5e-4, 4e-4, n), r=rng.uniform(0.5, 2.0, n), v_leak=rng.uniform(-0.1, 0.3, n),
                  v_threshold=rng.uniform(0.5, 1.5, n), v_reset=np.zeros(n))
    params.update(lif)
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "fc1": nir.Affine(weight=rng.normal(size=(n, 3)) * 2, bias=rng.normal(size=n)),
             "lif": nir.LIF(**params), "fc2": nir.Linear(weight=rng.normal(size=(2, n))),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "fc1"), ("fc1", "lif"), ("lif", "fc2"), ("fc2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges), params


def test_per_neuron_parameters_follow_nir_lif_at_dt():
    """A graph not from spiketide (per-neuron tau, r, v_leak, threshold) against forward Euler of NIR's LIF."""
    graph, p = _hand_graph()
    dt, steps = 1e-4, 6
    m = snir.from_nir(graph, timesteps=steps, dt=dt, dtype=torch.float64)
    x = np.random.default_rng(1).uniform(0, 1, (4, 3))
    want, v = [], np.zeros((4, 5))
    for _ in range(steps):
        current = x @ graph.nodes["fc1"].weight.T + graph.nodes["fc1"].bias
        v = v + dt / p["tau"] * (p["v_leak"] - v + p["r"] * current)
        s = (v >= p["v_threshold"]).astype(float)
        v = v * (1 - s)
        want.append(s @ graph.nodes["fc2"].weight.T)
    want = np.stack(want)
    assert 0.1 < np.mean(np.abs(want) > 0) and want.std(0).mean() > 0.01
    np.testing.assert_allclose(m(torch.tensor(x)).detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_a_spikingjelly_graph_imports_and_measures(tmp_path):
    """TIC from another framework: SpikingJelly's own NIR export runs in spiketide to SpikingJelly's outputs."""
    pytest.importorskip("spikingjelly.activation_based.nir_exchange")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Conv2d(1, 4, 3, padding=1),
                              neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True),
                              layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 7 * 7, 10)).double()
    for p in net.parameters():
        p.data *= 3
    functional.set_step_mode(net, "m")
    x = torch.rand(5, 1, 14, 14, dtype=torch.float64)
    xt = x.expand(3, *x.shape).contiguous()
    path = snir.write(tmp_path / "sj.nir", export_to_nir(net, xt, dt=1e-4))
    with torch.no_grad():
        functional.reset_net(net)
        want = net(xt)
    m = snir.from_nir(path, timesteps=3, dt=1e-4, dtype=torch.float64)
    assert float(want.std(0).mean()) > 1e-3
    assert _rel(want, m(x)) <= 1e-12
    assert bool(torch.isfinite(temporal_fisher(m, x, torch.arange(5)).trace).all())


@pytest.mark.parametrize("name,size,channels,width", [("convnet", 28, 1, 0.25), ("resnet19", 16, 3, 1 / 16),
                                                      ("alexnet", 28, 1, 1 / 16)], ids=_ID)
def test_spikingjelly_imports_the_export(tmp_path, name, size, channels, width):
    """SpikingJelly 2.0.0's importer at its default dt = 1e-4 runs the graph to spiketide's logits."""
    pytest.importorskip("spikingjelly.activation_based.nir_exchange")
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    model, x = _model(name, size, channels, width)
    path = snir.write(tmp_path / "model.nir", snir.to_nir(model))
    sj = import_from_nir(path, dtype=torch.float64)
    state, out = None, []
    with torch.no_grad():
        for _ in range(T):
            o, state = sj(x, state)
            out.append(o)
        assert _rel(model(x), torch.stack(out)) <= 1e-6


def test_snntorch_and_norse_import_the_export_one_image_at_a_time(tmp_path):
    """snnTorch 1.0.0 and Norse 1.1.0 map NIR's Flatten(start_dim=0) literally, so they run unbatched samples;
    Norse has no AvgPool2d importer (pooling="sum") and defaults to dt = 1e-3."""
    pytest.importorskip("snntorch.import_nir")
    norse = pytest.importorskip("norse.torch")
    from snntorch.import_nir import import_from_nir

    model, x = _model("convnet", 28, 1, 0.25)
    with torch.no_grad():
        want = model(x[:3])
    x = x[:3].float()  # both build float32 modules
    with contextlib.redirect_stdout(io.StringIO()):  # snnTorch prints its threshold rescaling
        sn = import_from_nir(nir.read(snir.write(tmp_path / "a.nir", snir.to_nir(model))))
    nr = norse.from_nir(nir.read(snir.write(tmp_path / "s.nir", snir.to_nir(model, pooling="sum"))), dt=1e-4)
    got_sn, got_nr = [], []
    with torch.no_grad():
        for xi in x:
            for mod in sn.modules():
                if hasattr(mod, "reset_mem"):
                    mod.reset_mem()
            got_sn.append(torch.stack([_step(sn, xi) for _ in range(T)]))
            state, seq = None, []
            for _ in range(T):
                o, state = nr(xi, state)
                seq.append(o)
            got_nr.append(torch.stack(seq))
    assert _rel(want, torch.stack(got_sn, 1).double()) <= 1e-5  # both run float32
    assert _rel(want, torch.stack(got_nr, 1).double()) <= 1e-5


def _step(net, x):
    out = net(x)
    return out[0] if isinstance(out, tuple) else out


def test_refusals_are_one_clear_line(tmp_path):
    graph, _ = _hand_graph()
    with pytest.raises(ConfigError, match="pass dt="):
        snir.from_nir(graph, timesteps=3)
    with pytest.raises(ConfigError, match="timesteps"):
        snir.from_nir(graph, dt=1e-4)
    with pytest.raises(ConfigError, match="resets to"):
        snir.from_nir(_hand_graph(v_reset=np.full(5, 0.1))[0], timesteps=3, dt=1e-4)
    cuba = nir.CubaLIF(tau_syn=np.ones(5), tau_mem=np.ones(5), r=np.ones(5), v_leak=np.zeros(5),
                       v_threshold=np.ones(5))
    graph.nodes["lif"] = cuba
    with pytest.raises(ConfigError, match="'lif' is a CubaLIF"):
        snir.from_nir(graph, timesteps=3, dt=1e-4)
    graph, _ = _hand_graph()
    graph.edges.append(("lif", "fc1"))  # a recurrent connection
    with pytest.raises(ConfigError, match="cycle"):
        snir.from_nir(graph, timesteps=3, dt=1e-4)
    m = snir.from_nir(_hand_graph()[0], timesteps=3, dt=1e-4)
    with pytest.raises(ConfigError, match=r"inputs \[B, 3\]"):
        m(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="built-in models"):
        snir.to_nir(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="does not exist"):
        snir.from_nir(tmp_path / "missing.nir")
    (tmp_path / "bad.nir").write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="cannot read NIR graph"):
        snir.read(tmp_path / "bad.nir")


def test_export_nir_command(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny_run(run)
    assert cli.main(["export-nir", str(run), "--out", str(tmp_path / "out" / "model.nir")]) == 0
    out = capsys.readouterr().out
    assert "convnet (epoch 1)" in out and "T = 2" in out and "dt = 0.0001 s" in out
    rel = float(out.split("max |logit difference| / max |logit| = ")[1].split()[0])
    assert rel <= 1e-5
    graph = nir.read(tmp_path / "out" / "model.nir")
    assert int(graph.metadata["timesteps"]) == 2 and graph.nodes["fc"].weight.dtype == np.float32
    assert cli.main(["export-nir", str(run), "--pooling", "sum", "--dt", "1e-3"]) == 0  # default: RUN_DIR/model.nir
    assert float(nir.read(run / "model.nir").metadata["dt"]) == 1e-3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export-nir", "--help"])
    assert exit_.value.code == 0 and "--pooling" in capsys.readouterr().out
    for argv, message in ((["export-nir", str(tmp_path / "nope")], "does not exist"),
                          (["export-nir", str(run), "--dt", "0"], "dt must be")):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
