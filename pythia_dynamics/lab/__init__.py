"""The hypothesis lab: the study's open questions as controlled experiments on mini suites (docs/hypotheses.md).

    from pythia_dynamics.lab import run_experiment, PRESETS
    result = run_experiment("heavy-tails", seeds=3)      # trains, sweeps, measures, judges
    print(result.table())                                # effects per level and the verdict table

Importing this package imports no torch; `run_experiment` does, when it trains.
"""

from pythia_dynamics.lab.presets import LAB_BASE, LAB_TINY, PRESETS, RECIPES, Level, Preset, get_preset, recipe
from pythia_dynamics.lab.runner import ExperimentResult, read_experiment, run_experiment
from pythia_dynamics.lab.verdicts import ROBUST_RULE, RULE, Comparison, Threshold

__all__ = ["Comparison", "ExperimentResult", "LAB_BASE", "LAB_TINY", "Level", "PRESETS", "Preset", "RECIPES", "ROBUST_RULE",
           "RULE", "Threshold", "get_preset", "read_experiment", "recipe", "run_experiment"]
