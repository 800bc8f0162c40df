"""The multi-run layer: procedures that compose training runs, checkpoints and analyses.

`pruning.iterative_prune` (Fig. 6-7: prune, retrain with T_retrain timesteps, repeat) and
`deficits.deficits_over_checkpoints` (Fig. 2 over training). The reproduction suite (named
experiments as data, scheduling, verdicts, reports) will live here too. Everything here may use
any layer below the CLI; nothing below imports it.
"""
