"""A spiketide run exported to NIR and run by each importer: spiketide, SpikingJelly, snnTorch and Norse.

    spiketide train --model convnet --dataset fashion-mnist --subset 1000 --test-subset 500 -T 6 --epochs 8 --out run
    spiketide export-nir run --out model.nir
    spiketide export-nir run --out model_sum.nir --pooling sum
    python examples/nir_importers.py run model.nir model_sum.nir --samples 500

Prints, per importer, the largest logit difference from the run's own model relative to its largest logit, the share
of test images with the same prediction and the test accuracy, all in float32: the table in README.md ("NIR: export
and import") comes from this script. Needs nir, nirtorch, SpikingJelly 2.0.0, snnTorch 1.0.0 and Norse 1.1.0.
"""

import argparse
import contextlib
import io

import torch

from spiketide import data, evaluation
from spiketide import nir as snir
from spiketide.train import load_model


def _rel(want: torch.Tensor, got: torch.Tensor) -> float:
    return float((want - got).abs().max() / want.abs().max())


def _unbatched(step, x: torch.Tensor, T: int, reset) -> torch.Tensor:
    """[T, N, C] logits of an importer that runs one image at a time; `step(x, state) -> (out, state)`."""
    out = []
    for xi in x:
        reset()
        state, seq = None, []
        for _ in range(T):
            o, state = step(xi, state)
            seq.append(o.reshape(-1))
        out.append(torch.stack(seq))
    return torch.stack(out, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("model_nir")
    p.add_argument("model_sum_nir")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import nir
    import norse.torch as norse
    from snntorch.import_nir import import_from_nir as snntorch_import
    from spikingjelly.activation_based.nir_exchange import import_from_nir as sj_import

    model, config, state = load_model(f"{a.run}/checkpoints/last.pt")
    ds = data.load(config.dataset, "test", root=config.data_root, subset=a.samples, seed=a.seed)
    x, y, T = evaluation.to_float(ds.images), ds.labels, config.timesteps
    model.eval()
    rows = []
    with torch.no_grad():
        want = evaluation.logits(model, x)

        def row(name, got):
            pred = got.mean(0).argmax(1)
            rows.append((name, _rel(want, got), float((pred == want.mean(0).argmax(1)).float().mean()),
                         float((pred == y).float().mean())))

        rows.append(("spiketide (the run itself)", None, None, float((want.mean(0).argmax(1) == y).float().mean())))
        row("spiketide.nir.from_nir", snir.from_nir(a.model_nir)(x))

        sj, st, out = sj_import(a.model_nir), None, []
        for _ in range(T):
            o, st = sj(x, st)
            out.append(o)
        row("SpikingJelly import_from_nir (dt 1e-4, batched)", torch.stack(out))

        with contextlib.redirect_stdout(io.StringIO()):  # snnTorch prints its threshold rescaling
            sn = snntorch_import(nir.read(a.model_nir))

        def sn_step(xi, state):
            o = sn(xi)
            return (o[0] if isinstance(o, tuple) else o), None

        def sn_reset():
            for mod in sn.modules():
                if hasattr(mod, "reset_mem"):
                    mod.reset_mem()

        row("snnTorch import_from_nir (one image at a time)", _unbatched(sn_step, x, T, sn_reset))
        for dt, label in ((1e-4, "Norse from_nir(..., dt=1e-4), model_sum.nir, one image at a time"),
                          (1e-3, "Norse at its default dt = 1e-3")):
            nr = norse.from_nir(nir.read(a.model_sum_nir), dt=dt)
            row(label, _unbatched(lambda xi, s: nr(xi, s), x, T, lambda: None))
    print(f"{config.model} run {a.run}, T = {T}, {len(x)} test images, float32")
    print("| importer | max relative logit difference | same prediction | test accuracy |")
    print("|---|---|---|---|")
    for name, rel, same, acc in rows:
        rel_s, same_s = ("–", "–") if rel is None else (f"{rel:.2g}", f"{same:.1%}")
        print(f"| {name} | {rel_s} | {same_s} | {acc:.1%} |")


if __name__ == "__main__":
    main()
