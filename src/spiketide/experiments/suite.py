"""The paper's figures and tables as data: for each experiment, the grid of training runs at each scale, the
analyses run on them, and the paper's claims as per-seed statistics with a rule (`verdicts.Claim`) and the
preconditions that make them testable (`statistics`). Each claim keeps the paper's sentence beside it.

Scales: `paper` is the paper's exact setting (ResNet19, CIFAR-10, T = 10, 300 epochs; meant for GPUs);
`cpu` is sized for a 2-core machine (Fashion-MNIST, the offline paper dataset; the paper's topologies at
reduced width; runs trained to near-zero loss, where TIC appears); `smoke` is a minute or two per
experiment, for tests, and its verdicts are mostly "inconclusive".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from spiketide import models
from spiketide.errors import ConfigError
from spiketide.experiments import statistics as st
from spiketide.experiments.statistics import ClaimSpec, Precondition
from spiketide.experiments.trials import resolve_config
from spiketide.experiments.verdicts import Claim
from spiketide.fisher.tic import TIC_MARGIN
from spiketide.losses import ALPHA_PRESETS

__all__ = ["SCALES", "Scale", "EXPERIMENTS", "Experiment", "ClaimSpec", "base_config", "scale_of", "resolve_names",
           "trial_seconds"]

@dataclass(frozen=True)
class Scale:
    """Everything one scale sets, in one place."""

    base: dict                 # TrainConfig options of every run, before an experiment's own
    samples: int               # test images for robustness and deficits
    pgd_iters: int
    deficit_window: int
    epoch_seconds: float       # seconds of one base epoch as the suite runs it, Fisher included (--list, order)
    model_cost: dict           # epoch cost of a model against the base model
    alphas: dict               # low / intermediate / high alpha (Eq. 9-10)
    arch_width: float          # width of the paper's topologies (Fig. 4(f), Fig. 7, the pilot)
    arch_fisher_every: int
    pilot: dict                # the pilot's own TrainConfig options
    prune: dict                # Fig. 7: rounds, retrain_epochs, t_retrain
    values: dict               # each Fig. 4 panel's values, and the pilot's T


_SCALES = {
    "smoke": Scale(
        base=dict(model="convnet", dataset="fashion-mnist", subset=60, test_subset=60, augment=False, timesteps=4,
                  tau=2.0, epochs=3, batch_size=20, lr=0.1, fisher_every=1, fisher_samples=16, fisher_per_layer=True,
                  checkpoint_epochs=[0, 1, 2, 3], fast_lif=False),
        samples=40, pgd_iters=2, deficit_window=2, epoch_seconds=1.5,
        model_cost={"resnet19": 4.0, "resnet34": 5.0, "vgg16": 2.5},
        alphas={"low": 0.5, "intermediate": 1.0, "high": 2.0}, arch_width=0.125, arch_fisher_every=1, pilot={},
        prune=dict(rounds=1, retrain_epochs=1, t_retrain=[2, 5]),
        values=dict(timesteps=[4, 6], tau=[2.0, 4.0], weight_decay=[0.0, 5e-4], lr=[0.03, 0.1],
                    dataset=["fashion-mnist", "digits"], model=["alexnet", "resnet34"], pilot_timesteps=[2, 4])),
    # Half-width convnet: 500 images to a training loss near 0.05 in 60 epochs (IC 3.98 -> 2.27, measured), at a
    # third of the full width's cost; test accuracy every 5 epochs (evaluation was a third of an epoch). Epoch
    # time: one thread, two trials at a time on the 2-core machine, calibrated so that the estimate of the five-seed
    # suite is its measured 201.4 trial-min (140 trials, 2026-12-02); the 2.3 s measured before the later speed-ups
    # (one LIF graph per T, the compiled pool) made it 1.8x high. The paper's topologies at 1/16 width (ResNet34
    # at 1/8 took 9 s per epoch), their Fisher every 10 epochs (a measurement costs 1.4 of their epochs). Alpha
    # against the per-horizon losses a CPU run reaches (about 0.02-0.1 at the end): the paper's 1e-3..7e-2 never
    # bind there (measurements: alpha 1e-3 and 1e-2 gave identical models).
    "cpu": Scale(
        base=dict(model="convnet", width=0.5, dataset="fashion-mnist", subset=500, test_subset=500, augment=False,
                  timesteps=6, tau=2.0, epochs=60, batch_size=25, lr=0.1, eval_every=5, fisher_every=5,
                  fisher_samples=128, fisher_per_layer=True, checkpoint_epochs=[1, 10, 20, 40, 60]),
        samples=500, pgd_iters=10, deficit_window=3, epoch_seconds=1.3,
        model_cost={"resnet19": 2.6, "resnet34": 4.1, "vgg16": 1.35, "alexnet": 1.0},
        alphas={"low": 0.02, "intermediate": 0.1, "high": 0.3}, arch_width=0.0625, arch_fisher_every=10,
        pilot={"epochs": 15}, prune=dict(rounds=3, retrain_epochs=2, t_retrain=[2, 3, 5]),
        values=dict(timesteps=[4, 6, 8], tau=[0.75, 2.0, 4.0], weight_decay=[0.0, 5e-4, 5e-3],
                    lr=[0.01, 0.03, 0.1, 0.3], dataset=["fashion-mnist", "digits"],
                    model=["alexnet", "resnet19", "resnet34"], pilot_timesteps=[2, 4, 8])),
    # The paper's setting; the epoch time is the H200 ResNet19 epoch in BENCHMARKS.md.
    "paper": Scale(
        base=dict(model="resnet19", dataset="cifar10", timesteps=10, tau=2.0, epochs=300, batch_size=128, lr=0.3,
                  fisher_every=20, fisher_samples=1024, fisher_per_layer=True, checkpoint_epochs=[1, 20, 40, 140, 300]),
        samples=10000, pgd_iters=10, deficit_window=3, epoch_seconds=24.6,
        model_cost={"resnet34": 1.2, "vgg16": 0.6, "alexnet": 0.3},
        alphas=dict(ALPHA_PRESETS["cifar10"]), arch_width=1.0, arch_fisher_every=20, pilot={},
        prune=dict(rounds=5, retrain_epochs=60, t_retrain=[2, 3, 5]),
        values=dict(timesteps=[4, 6, 8, 10], tau=[0.75, 2.0, 4.0], weight_decay=[0.0, 5e-4, 5e-3],
                    lr=[0.03, 0.08, 0.3, 0.8], dataset=["cifar10", "svhn", "fashion-mnist"],
                    model=["alexnet", "resnet19", "resnet34"], pilot_timesteps=[2, 4, 8])),
}
SCALES = tuple(_SCALES)


def scale_of(name: str) -> Scale:
    return _SCALES[name]


def base_config(scale: str) -> dict:
    return dict(_SCALES[scale].base)


@dataclass(frozen=True)
class Experiment:
    """One figure or table: runs per scale (label -> config overrides), analyses per label, claims, figure kind."""

    name: str
    title: str
    runs: Callable[[str], dict[str, dict]]
    claims: Callable[[str], tuple[ClaimSpec, ...]]
    figure: str  # a kind known to experiments.figures
    analyses: Callable[[str, str], dict[str, dict]] = field(default=lambda scale, label: {})

    def grid(self, scale: str, seed: int) -> dict[str, dict]:
        """label -> full TrainConfig dict for one seed."""
        return {label: {**base_config(scale), **over, "seed": int(seed)} for label, over in self.runs(scale).items()}

    def hours(self, scale: str, seeds: int = 1) -> float:
        """Estimated trial-hours (one CPU per trial; GPU-hours at paper scale) from measured epoch times."""
        return seeds * sum(trial_seconds(scale, {**base_config(scale), **over}, self.analyses(scale, label))
                           for label, over in self.runs(scale).items()) / 3600


def trial_seconds(scale: str, config: dict, analyses: dict) -> float:
    """Estimated seconds of one trial: epochs (pruning's retraining included) x the scale's measured epoch time,
    scaled by model cost and T."""
    prune = analyses.get("prune")
    epochs = config["epochs"] + (prune["retrain_epochs"] * prune["rounds"] * len(prune["t_retrain"]) if prune else 0)
    sc = _SCALES[scale]
    return (epochs * sc.epoch_seconds * sc.model_cost.get(config["model"], 1.0)
            * config["timesteps"] / sc.base["timesteps"])


def _values(scale: str, key: str) -> list:
    return _SCALES[scale].values[key]


_DEFICITS = lambda scale, label: {"deficits": {"samples": _SCALES[scale].samples,  # noqa: E731
                                               "epochs": base_config(scale)["checkpoint_epochs"],
                                               "window": _SCALES[scale].deficit_window}}
_ROBUST = lambda scale, label: {"robustness": dict(samples=_SCALES[scale].samples,  # noqa: E731
                                                   pgd_iters=_SCALES[scale].pgd_iters)}

EXPERIMENTS: dict[str, Experiment] = {}


def _add(e: Experiment) -> None:
    EXPERIMENTS[e.name] = e


def _each(pre: Callable[[str], Precondition]) -> Callable[..., tuple[Precondition, ...]]:
    return lambda *labels: tuple(pre(lab) for lab in labels)


_fits, _tracked, _binds = _each(st.fits), _each(st.fisher_tracked), _each(st.binds)
_FIT = lambda label: _fits(label) + _tracked(label)  # noqa: E731


def _tic_rule(label: str, text: str, paper: str, block: str | None = None) -> ClaimSpec:
    """The one TIC rule (fisher.tic) on one run, or on one `block` of it, testable only when the run fits its
    training set."""
    of = " of the block" if block else ""
    return ClaimSpec(Claim(f"tic-{block or label}", text, paper,
                           f"(IC_end − min(IC_start, IC_early)) / (T − 1){of}", "<0", margin=TIC_MARGIN),
                     st.block_tic(label, block) if block else st.tic(label), _FIT(label))


def _base_label(runs: dict[str, dict], key: str, scale: str) -> str | None:
    """The label of a panel's run at the scale's default value of `key` (None when the panel has none)."""
    default = resolve_config(base_config(scale))[key]
    return next((lab for lab, over in runs.items() if over.get(key) == default), None)


def _blocks(scale: str) -> tuple[str, ...]:
    """The base model's blocks, stem and classifier excluded (Fig. 3 is drawn over residual blocks)."""
    return tuple(b for b in models.block_names(base_config(scale)["model"]) if b not in ("stem", "fc"))


def _fig1(scale: str) -> tuple[ClaimSpec, ...]:
    return (
        _tic_rule("base", "Information concentrates in early timesteps: IC ends more than a tenth of its range below "
                  "both its start and its early-training level",
                  "as training goes on, Fisher information concentrates on the first few timesteps (TIC)"),
        ClaimSpec(Claim("i1-largest", "After training, I_1 is the largest I_t",
                        "I_t is highest at t = 1 and becomes nearly 0 for t = 2..10 (epoch 300)",
                        "(I_1 − max_{t>1} I_t) / Σ I_t at the last epoch", ">0"),
                  st.i1_lead("base"), _FIT("base")),
        ClaimSpec(Claim("rise-first", "Early in training IC first rises (information spreads to later timesteps)",
                        "SNN at epoch 20 yields the highest IC", "(IC_early − IC_start) / (T − 1)", ">0"),
                  st.rise("base"), _tracked("base")),
        ClaimSpec(Claim("i1-share-rises", "The share of information at t = 1 grows from early training to the end",
                        "the early-time information increases", "share of I_1, end level − early level", ">0"),
                  st.share_change("base", 0), _FIT("base")),
        ClaimSpec(Claim("iT-share-falls", "The share of information at t = T shrinks from early training to the end",
                        "the amount of Fisher information in the latter timesteps steadily decreases",
                        "share of I_T, end level − early level", "<0"),
                  st.share_change("base", -1), _FIT("base")),
    )


_add(Experiment("fig1", "Fig. 1: the information centroid across epochs, and I_t at four epochs",
                runs=lambda scale: {"base": {}}, claims=_fig1, figure="ic"))

_add(Experiment(
    "fig2", "Fig. 2: time-window deficits at five points in training",
    runs=lambda scale: {"base": {}}, analyses=_DEFICITS,
    claims=lambda scale: (
        ClaimSpec(Claim("early-window-hurts", "Late in training, noise in the first window hurts more than in the "
                        "last", "as training goes on, early timesteps show higher noise sensitivity compared to the "
                        "later timesteps", "Acc[1..w] − Acc[last window] at the last checkpoint (accuracy, 0–1)",
                        "<0"),
                  st.deficit_first_window("base", "end"), (st.above_chance("base", "end"),)),
        ClaimSpec(Claim("flat-at-start", "Early in training all windows show similar sensitivity (within 2 points)",
                        "at the beginning of the training phase, all timesteps show similar noise sensitivity",
                        "Acc[1..w] − Acc[last window] at the first checkpoint clearly above chance", "~0",
                        margin=0.02),
                  st.deficit_first_window("base", "start"), (st.above_chance("base", "start"),)),
    ),
    figure="deficits"))


def _fig3(scale: str) -> tuple[ClaimSpec, ...]:
    blocks = _blocks(scale)
    if len(blocks) < 2:
        return ()
    gap = ClaimSpec(Claim("shallow-late", f"At the end, the first block ({blocks[0]}) holds later information than "
                          f"the last ({blocks[-1]})", "shallow and deep layers contain high Fisher information at "
                          "the latter and early timesteps", "(IC(first block) − IC(last block)) at the end / (T − 1)",
                          ">0"),
                    st.block_gap("base", blocks[0], blocks[-1]), _FIT("base"))
    each = tuple(_tic_rule("base", f"Block {b} follows TIC (the TIC rule on its own Fisher information)",
                           "the overall trend of temporal information dynamics in each layer follows the TIC trend", b)
                 for b in blocks)
    return (gap,) + each


_add(Experiment("fig3", "Fig. 3: per-block Fisher information", runs=lambda scale: {"base": {}}, claims=_fig3,
                figure="blocks"))

_SIMILAR_ACC = 0.02  # "similar accuracy": within 2 points


def _ablation(name: str, title: str, what: str, runs: Callable[[str], dict[str, dict]],
              extra: Callable[[str, list[str]], tuple[ClaimSpec, ...]] = lambda scale, labels: (),
              same_accuracy: str | None = None) -> None:
    """A Fig. 4 panel: one run per value of one option, the TIC rule for each, the panel's own claims
    (`extra(scale, labels)`), and, when `same_accuracy` names the option, each value's accuracy against the
    default's ("there was no conspicuous effect on accuracy", which the paper excepts for data and architecture)."""
    def claims(scale: str) -> tuple[ClaimSpec, ...]:
        r = runs(scale)
        out = tuple(_tic_rule(lab, f"TIC appears with {what} {lab.split('=')[-1]}",
                              "most cases show TIC at the later epochs (Fig. 4)") for lab in r)
        out += extra(scale, list(r))
        base = _base_label(r, same_accuracy, scale) if same_accuracy else None
        out += tuple(ClaimSpec(Claim(f"acc-{lab}", f"Accuracy with {lab} is within 2 points of {base}",
                                     "IC transition speed changes, but there was no conspicuous effect on accuracy",
                                     f"acc({lab}) − acc({base})", "~0", margin=_SIMILAR_ACC),
                               st.diff(st.acc(lab), st.acc(base)), _fits(lab, base))
                     for lab in r if base is not None and lab != base)
        return out
    _add(Experiment(name, title, runs=runs, figure="ic", claims=claims))


def _sweep(name: str, title: str, what: str, key: str, label: str,
           extra: Callable[[str, list[str]], tuple[ClaimSpec, ...]]) -> None:
    """A Fig. 4 panel over the scale's values of option `key`, each run labelled `label.format(value)`, with
    each value's accuracy against the default's."""
    runs = lambda scale: {label.format(v): {key: v} for v in _values(scale, key)}  # noqa: E731
    _ablation(name, title, what, runs, extra, same_accuracy=key)


_sweep("fig4-timesteps", "Fig. 4(a): TIC for several T", "T", "timesteps", "T={}", lambda scale, labels: (
    ClaimSpec(Claim("longer-T-later", "A longer T starts the IC transition later (smoothed IC peaks later)",
                    "a longer timestep starts late IC transition from high to low",
                    "epoch of the smoothed IC peak / epochs: longest T − shortest T", ">0"),
              st.diff(st.transition(labels[-1]), st.transition(labels[0])), _tracked(labels[-1], labels[0])),))

_sweep("fig4-tau", "Fig. 4(b): TIC for tau = 0.75, 2, 4", "tau", "tau", "tau={}", lambda scale, labels: (
    ClaimSpec(Claim("high-tau-higher-ic", "tau = 4 has a higher IC mid-training than tau = 2",
                    "the higher time constant (tau = 4) shows relatively higher IC compared to the others",
                    "(IC(tau=4) − IC(tau=2)) over the middle third of training / (T − 1)", ">0"),
              st.diff(st.ic_mid("tau=4.0"), st.ic_mid("tau=2.0")), _tracked("tau=4.0", "tau=2.0")),))

_sweep("fig4-weight-decay", "Fig. 4(c): TIC for several weight decays", "weight decay", "weight_decay", "wd={:g}",
       lambda scale, labels: (
           ClaimSpec(Claim("wd-no-change", "Weight decay does not change where information ends up (IC at the end "
                           "within a tenth of its range)",
                           "weight decay does not make significant change on the temporal concentration behavior",
                           "(IC_end(wd=5e-4) − IC_end(wd=0)) / (T − 1)", "~0", margin=TIC_MARGIN),
                     st.diff(st.ic_end("wd=0.0005"), st.ic_end("wd=0")), _FIT("wd=0.0005") + _FIT("wd=0")),))

_sweep("fig4-lr", "Fig. 4(d): TIC for four learning rates", "lr", "lr", "lr={:g}", lambda scale, labels: (
    ClaimSpec(Claim("low-lr-later", "A lower learning rate starts the IC transition later",
                    "a lower lr shows late IC transition from late timesteps to early timesteps",
                    "epoch of the smoothed IC peak / epochs: lowest lr − default lr", ">0"),
              st.diff(st.transition(labels[0]), st.transition(f"lr={base_config(scale)['lr']:g}")),
              _tracked(labels[0], f"lr={base_config(scale)['lr']:g}")),))

# scikit-learn's digits (the second offline dataset) has 450 test images: all of them are used.
_DATASET_OVERRIDES = {"digits": {"test_subset": None}}

_ablation(
    "fig4-dataset", "Fig. 4(e): TIC on several datasets", "dataset",
    lambda scale: {d: {"dataset": d, **_DATASET_OVERRIDES.get(d, {})}
                   for d in _values(scale, "dataset")})

_ablation(
    "fig4-arch", "Fig. 4(f): TIC for AlexNet, ResNet19, ResNet34", "architecture",
    lambda scale: {m: {"model": m, "width": _SCALES[scale].arch_width,
                       "fisher_every": _SCALES[scale].arch_fisher_every} for m in _values(scale, "model")},
    lambda scale, labels: (
        ClaimSpec(Claim("alexnet-higher-end-ic", "AlexNet ends with a higher IC than ResNet34",
                        "AlexNet does not show very low IC value at the end; ResNet34 shows quick information "
                        "concentration in timesteps 1~3", "(IC_end(alexnet) − IC_end(resnet34)) / (T − 1)", ">0"),
                  st.diff(st.ic_end("alexnet"), st.ic_end("resnet34")), _FIT("alexnet") + _FIT("resnet34")),))


def _alpha_runs(scale: str) -> dict[str, dict]:
    return {f"alpha-{lvl}": {"loss": "alpha", "alpha": a} for lvl, a in _SCALES[scale].alphas.items()}


_add(Experiment(
    "fig5", "Fig. 5: Fisher information, L_t and accuracy for three alpha",
    runs=_alpha_runs,
    claims=lambda scale: (
        ClaimSpec(Claim("alpha-controls-fisher", "A smaller alpha leaves less Fisher information",
                        "smaller alpha shows less Fisher information across timesteps",
                        "log Σ I_t (alpha low) − log Σ I_t (alpha high), end of training", "<0"),
                  st.diff(st.log_fisher_end("alpha-low"), st.log_fisher_end("alpha-high")),
                  _binds("alpha-low", "alpha-high")),
        ClaimSpec(Claim("alpha-high-rising", "With high alpha, Fisher information increases with t (IC at the end "
                        "above the uniform (T + 1) / 2)",
                        "alpha_high forces high Fisher information, therefore it increases as time goes on",
                        "(IC_end(alpha high) − (T + 1) / 2) / (T − 1)", ">0"),
                  st.ic_end_above_uniform("alpha-high"), _binds("alpha-high")),
        ClaimSpec(Claim("alpha-high-later-ic", "High alpha ends with a higher IC than low alpha (it suppresses TIC)",
                        "compared to alpha_low, alpha_high forces Fisher information to rise over time (Fig. 5(a))",
                        "(IC_end(alpha high) − IC_end(alpha low)) / (T − 1)", ">0"),
                  st.diff(st.ic_end("alpha-high"), st.ic_end("alpha-low")), _binds("alpha-low", "alpha-high")),
        ClaimSpec(Claim("alpha-same-accuracy", "All alpha reach similar accuracy (low vs high within 2 points)",
                        "all alpha configurations achieve similar accuracy (CIFAR-10: 92.04 vs 91.87)",
                        "acc(low) − acc(high)", "~0", margin=_SIMILAR_ACC),
                  st.diff(st.acc("alpha-low"), st.acc("alpha-high")), _binds("alpha-low", "alpha-high")),
    ),
    figure="alpha"))


def _table1_runs(scale: str) -> dict[str, dict]:
    return {"ce": {}, **_alpha_runs(scale)}


_TABLE1 = (("pgd", "PGD", "−17.41 vs −59.46"), ("fgsm", "FGSM", "−14.82 vs −38.37"),
           ("gaussian", "Gaussian-noise", "−23.03 vs −30.86"), ("blur", "blur", "−33.93 vs −37.32"))


def _table1(scale: str) -> tuple[ClaimSpec, ...]:
    lo, hi = "alpha-low", "alpha-high"
    out = tuple(ClaimSpec(Claim(f"low-alpha-{k}", f"Low alpha loses less accuracy to {name} than high alpha",
                                f"CIFAR-10 {name} drop from clean: {p}",
                                f"{name} drop(high alpha) − drop(low alpha)", ">0"),
                          st.diff(st.drop(hi, k), st.drop(lo, k)), _binds(lo, hi))
                for k, name, p in _TABLE1)
    out += tuple(ClaimSpec(Claim(f"{a}-below-{b}-{k}", f"{name} drop: alpha {a} < alpha {b} (the ordering low < "
                                 "intermediate < high)", "for all noise, low alpha shows less performance drop; "
                                 f"CIFAR-10 {name}: {p}", f"{name} drop({b}) − drop({a})", ">0"),
                           st.diff(st.drop(f"alpha-{b}", k), st.drop(f"alpha-{a}", k)),
                           _binds(f"alpha-{a}", f"alpha-{b}"))
                 for k, name, p in (("pgd", "PGD", "−17.41 < −33.24 < −59.46"), ("fgsm", "FGSM",
                                                                                  "−14.82 < −22.60 < −38.37"))
                 for a, b in (("low", "intermediate"), ("intermediate", "high")))
    out += (ClaimSpec(Claim("ce-below-high-pgd", "Cross-entropy (which shows TIC) loses less PGD accuracy than "
                            "high alpha (which suppresses it)", "the SNN model that shows temporal concentration "
                            "behavior might have better robustness (the argument after Eq. 11)",
                            "PGD drop(high alpha) − drop(ce)", ">0"),
                      st.diff(st.drop(hi, "pgd"), st.drop("ce", "pgd")), _fits("ce") + _binds(hi)),)
    return out


_add(Experiment(
    "table1", "Table 1: clean, Gaussian noise, blur, FGSM and PGD accuracy for cross-entropy and three alpha",
    runs=_table1_runs, analyses=_ROBUST, claims=_table1, figure="table"))


def _fig7(scale: str) -> tuple[ClaimSpec, ...]:
    out = ()
    for m in ("vgg16", "resnet19"):
        out += (
            ClaimSpec(Claim(f"{m}-late-near-zero", f"{m} trained with T = 5: information after t = 3 is near zero "
                            "(under a tenth of the total)", "Fisher information shows near-zero values after T = 3 "
                            "(Fig. 6(b))", "Σ_{t>3} I_t / Σ I_t at the end − 0.1", "<0"),
                      st.late_share(m, 3), _fits(m)),
            ClaimSpec(Claim(f"{m}-t3-close", f"{m}: T_retrain = 3 is within 1 point of T = 5 at the highest sparsity",
                            "for T_retrain = 3, 4, 5 we achieve similar pruning performance",
                            "acc(T_retrain=5) − acc(T_retrain=3)", "~0", margin=0.01),
                      st.diff(st.pruned(m, 5), st.pruned(m, 3)), _fits(m)),
            ClaimSpec(Claim(f"{m}-t2-worse", f"{m}: T_retrain = 2 loses more than 1 point against T = 5",
                            "T_retrain = 2 shows huge performance degradation",
                            "acc(T_retrain=5) − acc(T_retrain=2)", ">0", margin=0.01),
                      st.diff(st.pruned(m, 5), st.pruned(m, 2)), _fits(m)))
    return out


_add(Experiment(
    "fig7", "Fig. 7: accuracy against sparsity for several T_retrain, VGG16 and ResNet19",
    # Fisher measured once at the end (and at initialisation): Fig. 6(b), information near zero after t = 3.
    runs=lambda scale: {m: {"model": m, "width": _SCALES[scale].arch_width, "timesteps": 5,
                            "fisher_every": base_config(scale)["epochs"]}
                        for m in ("vgg16", "resnet19")},
    analyses=lambda scale, label: {"prune": {"rounds": _SCALES[scale].prune["rounds"], "rate": 0.5,
                                             "retrain_epochs": _SCALES[scale].prune["retrain_epochs"],
                                             "t_retrain": list(_SCALES[scale].prune["t_retrain"])}},
    claims=_fig7, figure="pruning"))

_add(Experiment(
    "pilot-timesteps", "Pilot: accuracy against T for a high- and a low-capacity model",
    # Accuracy only, no Fisher: at CPU scale 15 epochs, a budget the accuracy comparison across T shares.
    runs=lambda scale: {f"{m}-T={t}": {"model": m, "width": _SCALES[scale].arch_width, "timesteps": t,
                                       "fisher_every": 0, "checkpoint_epochs": [], **_SCALES[scale].pilot}
                        for m in ("resnet19", "alexnet") for t in _values(scale, "pilot_timesteps")},
    claims=lambda scale: (
        ClaimSpec(Claim("resnet19-saturates-4", "ResNet19 saturates at T = 4 (T = 8 within 1 point)",
                        "ResNet19 shows performance saturation at timestep 4", "acc(T=8) − acc(T=4)", "~0",
                        margin=0.01),
                  st.diff(st.acc("resnet19-T=8"), st.acc("resnet19-T=4")), _fits("resnet19-T=8", "resnet19-T=4")),
        ClaimSpec(Claim("alexnet-needs-8", "AlexNet still gains more than 1 point from T = 4 to T = 8",
                        "AlexNet saturates at timestep 8", "acc(T=8) − acc(T=4)", ">0", margin=0.01),
                  st.diff(st.acc("alexnet-T=8"), st.acc("alexnet-T=4")), _fits("alexnet-T=8", "alexnet-T=4")),
    ),
    figure="accuracy-vs-T"))


# -- beyond the paper: hypotheses written before any run, judged by the same rules ----------------------------

_HYPOTHESIS = "no claim in the paper: a hypothesis stated before the run"


def _loss_runs(scale: str) -> dict[str, dict]:
    return {"ce": {}, "per-timestep": {"loss": "per-timestep"}, "tet": {"loss": "tet", "tet_lambda": 0.05},
            "alpha": {"loss": "alpha", "alpha": _SCALES[scale].alphas["intermediate"]}}


_add(Experiment(
    "tic-vs-loss", "Beyond the paper: TIC under mean-output CE, per-timestep CE, TET and the alpha-loss",
    runs=_loss_runs, analyses=_ROBUST,
    claims=lambda scale: (
        _tic_rule("per-timestep", "TIC also appears under per-timestep cross-entropy", _HYPOTHESIS),
        _tic_rule("tet", "TIC also appears under TET (lambda 0.05)", _HYPOTHESIS),
        ClaimSpec(Claim("per-timestep-spreads", "Per-timestep CE ends with a higher IC than mean-output CE "
                        "(every timestep is trained to classify on its own)", _HYPOTHESIS,
                        "(IC_end(per-timestep) − IC_end(ce)) / (T − 1)", ">0"),
                  st.diff(st.ic_end("per-timestep"), st.ic_end("ce")), _FIT("per-timestep") + _FIT("ce")),
        ClaimSpec(Claim("per-timestep-pgd", "Per-timestep CE loses less accuracy to PGD than mean-output CE",
                        _HYPOTHESIS, "PGD drop(ce) − drop(per-timestep)", ">0"),
                  st.diff(st.drop("ce", "pgd"), st.drop("per-timestep", "pgd")), _fits("per-timestep", "ce")),
    ),
    figure="ic"))

_add(Experiment(
    "tic-vs-encoding", "Beyond the paper: TIC under direct and Poisson (rate) coding",
    runs=lambda scale: {"direct": {}, "poisson": {"encoding": "poisson"}}, analyses=_ROBUST,
    claims=lambda scale: (
        _tic_rule("poisson", "TIC also appears under Poisson (rate) coding", _HYPOTHESIS),
        ClaimSpec(Claim("poisson-later", "Poisson coding ends with a higher IC than direct coding (each timestep "
                        "sees only a sample of the image)", _HYPOTHESIS,
                        "(IC_end(poisson) − IC_end(direct)) / (T − 1)", ">0"),
                  st.diff(st.ic_end("poisson"), st.ic_end("direct")), _FIT("poisson") + _FIT("direct")),
        ClaimSpec(Claim("poisson-pgd", "Poisson coding loses less accuracy to PGD than direct coding", _HYPOTHESIS,
                        "PGD drop(direct) − drop(poisson)", ">0"),
                  st.diff(st.drop("direct", "pgd"), st.drop("poisson", "pgd")), _fits("poisson", "direct")),
    ),
    figure="ic"))


def resolve_names(names: list[str]) -> list[str]:
    """Experiment names as given ('all' expands to every one), checked."""
    out: list[str] = []
    for n in names:
        if n == "all":
            out += [e for e in EXPERIMENTS if e not in out]
        elif n not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {n!r}; choose from: all, {', '.join(EXPERIMENTS)} "
                              "(`spiketide reproduce --list` describes each)")
        elif n not in out:
            out.append(n)
    return out
