"""The multi-run layer: procedures that compose training runs, checkpoints and analyses.

`analyses` (every analysis of a run's checkpoints, called by the CLI and the trials alike), `pruning`
(Fig. 6-7: prune, retrain with T_retrain timesteps, repeat) and the reproduction suite: `suite` (the
paper's experiments and claims as data), `trials` (one run plus its analyses), `reproduce` (Ray
scheduling), `statistics`, `verdicts` and `report`. Nothing below the CLI imports this layer.
"""
