"""spiketide's operation counts against SpikingJelly 2.0.0's op counters on the same forward pass of a trained model.

    pip install --no-deps spikingjelly==2.0.0 loguru
    python examples/op_counters.py RUN/checkpoints/last.pt --samples 256

Prints, per conv/linear layer, SpikingJelly's `SynOpCounter` (SOPs) and `MACCounter` (MACs) per image and timestep
and summed over T, beside spiketide's `spike_stats` with the default count (non-binary inputs: events x fan-out) and
with nonbinary="macs" (as the peers count them); then both totals and energies of spiketide against one ANN pass.
The numbers quoted in README.md ("How operations are counted, against SpikingJelly and syops") come from this script.
"""

import argparse

import torch

from spiketide import data, evaluation, stats
from spiketide.train import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--samples", type=int, default=64, help="class-balanced test images (default 64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    model, config, state = load_model(a.checkpoint)
    ds = data.load(config.dataset, "test", root=config.data_root, subset=a.samples, seed=a.seed)
    x = evaluation.to_float(ds.images)
    T, n = config.timesteps, len(x)
    print(f"{a.checkpoint} (epoch {state.get('epoch')}): {config.model} width {config.width}, T = {T}, {n} test images")

    model.eval()
    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        evaluation.logits(model, x)

    leaves = {name for name, m in model.named_modules() if name and not any(m.children())}

    def per_layer(counter):  # {leaf layer: ops per image over T}; keys are "<Class>.<layer>", containers summed too
        counts = {k.split(".", 1)[1]: sum(v.values()) / n for k, v in counter.get_counts().items() if "." in k}
        return {k: v for k, v in counts.items() if k in leaves}

    sj_sops, sj_macs = per_layer(syn), per_layer(mac)
    default = stats.spike_stats(model, ds.images, ds.labels)
    dense = stats.spike_stats(model, ds.images, ds.labels, nonbinary="macs")
    layers = list(default["macs_per_image"]) + [k for k in {**sj_sops, **sj_macs} if k not in default["macs_per_image"]]
    print(f"non-binary inputs (spiketide): {default['nonbinary_inputs']}")
    print(f"{'layer':12} {'SJ SOPs/img':>13} {'SJ MACs/img':>13} {'SJ MACs/img/t':>14} "
          f"{'st SOPs/img':>13} {'st MACs/img':>13} {'st(macs) SOPs':>14} {'st(macs) MACs':>14}")
    for layer in layers:
        s_d = sum(default["sops_per_image"].get(layer, [0])) + 0.0
        m_d = sum(default["snn_macs_per_image"].get(layer, [0])) + 0.0
        s_m = sum(dense["sops_per_image"].get(layer, [0])) + 0.0
        m_m = sum(dense["snn_macs_per_image"].get(layer, [0])) + 0.0
        print(f"{layer:12} {sj_sops.get(layer, 0):13,.0f} {sj_macs.get(layer, 0):13,.0f} "
              f"{sj_macs.get(layer, 0) / T:14,.0f} {s_d:13,.0f} {m_d:13,.0f} {s_m:14,.0f} {m_m:14,.0f}")
    for name, r in (("default", default), ("nonbinary=macs", dense)):
        t, e = r["totals"], r["energy"]
        print(f"spiketide {name}: {t['sops_per_image']:,.0f} SOPs + {t['snn_macs_per_image']:,.0f} MACs per image "
              f"against {t['ann_macs_per_image']:,.0f} ANN MACs; {e['snn_pj_per_image'] / 1e6:.3f} uJ against "
              f"{e['ann_pj_per_image'] / 1e6:.3f} uJ, SNN / ANN {e['ratio']:.3f}")
    extra = ", ".join(k for k in sj_macs if k not in default["macs_per_image"]) or "none"
    print(f"SpikingJelly: SOPs {sum(sj_sops.values()):,.0f}, MACs {sum(sj_macs.values()):,.0f} per image "
          f"(beyond conv/linear layers: {extra})")


if __name__ == "__main__":
    main()
