"""The hypothesis lab's presets: each open question of the study as one controlled experiment.

A preset names a factor, its levels (each a set of `SuiteConfig` changes on top of the lab's base recipe),
the analyses swept, the measures read from the store (`measures.py`) and the comparisons that turn them into
verdicts (`verdicts.py`). docs/hypotheses.md explains each one and holds the measured answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pythia_dynamics.lab.verdicts import Comparison, Threshold, effects, judge, judge_threshold, robustness
from pythia_dynamics.train.config import SuiteConfig

__all__ = ["Level", "Preset", "PRESETS", "LAB_BASE", "LAB_TINY", "RECIPES", "recipe", "get_preset"]

# The full-size recipe: the default suite's recipe (Pythia's: schedule, optimiser, decay timescale, GPT-NeoX)
# shrunk (d_model 64, 600 steps of 512 tokens) so that one suite trains and is swept in about a minute on 2
# CPU cores, and a preset of up to 3 levels x 3 seeds fits 20 minutes (docs/hypotheses.md has the timings).
LAB_BASE = SuiteConfig(
    name="lab", corpus_bytes=1_000_000, vocab_size=2048, n_layers=4, d_model=64, n_heads=4, d_mlp=256,
    seq_len=64, batch_size=8, total_steps=600, n_evenly_spaced=20, eval_tokens=8_192,
)  # fmt: skip
# --tiny: seconds per suite, for CI; a smoke check of the machinery, never an answer.
LAB_TINY = SuiteConfig(
    name="lab", corpus_bytes=60_000, heldout_fraction=0.05, heldout_max_bytes=10_000, vocab_size=300,
    n_layers=2, d_model=32, n_heads=4, d_mlp=128, seq_len=32, batch_size=8, total_steps=16, n_evenly_spaced=4,
    peak_lr=1e-2, loss_every=4, eval_tokens=1_024,
)  # fmt: skip

RECIPES = ("lab", "induction")


def recipe(name: str, tiny: bool = False) -> SuiteConfig:
    """A preset's base recipe by name: "lab" is LAB_BASE (--tiny: LAB_TINY); "induction" is the embedded
    induction suite's recipe, INDUCTION_SUITE_CONFIG (--tiny: TINY_INDUCTION_CONFIG), the only one here in which
    an induction head forms within the schedule (docs/circuits.md, "The embedded suites"; ~2.6 min a suite on 2
    CPU cores). --tiny recipes are named `<name>-tiny` so that their suites never mix with full-size ones."""
    if name == "lab":
        config = LAB_TINY if tiny else LAB_BASE
    elif name == "induction":
        # imported here: train.suite imports torch, and `experiment --list` must not
        from pythia_dynamics.train.suite import INDUCTION_SUITE_CONFIG, TINY_INDUCTION_CONFIG

        config = (TINY_INDUCTION_CONFIG if tiny else INDUCTION_SUITE_CONFIG).replace(name="lab-induction")
    else:
        raise ValueError(f"no recipe named {name!r}; recipes: {', '.join(RECIPES)}")
    return config.replace(name=f"{config.name}-tiny") if tiny else config


@dataclass(frozen=True)
class Level:
    """One setting of a preset's factor: `changes` to the base `SuiteConfig` (field -> value)."""

    name: str
    changes: tuple[tuple[str, object], ...] = ()

    def config(self, base: SuiteConfig, preset: str, seed: int, **extra) -> SuiteConfig:
        return base.replace(**dict(self.changes), **extra, seed=seed, name=f"{base.name}-{preset}-{self.name}-s{seed}")


@dataclass(frozen=True)
class Preset:
    name: str
    question: str
    factor: str
    levels: tuple[Level, ...]
    analyses: tuple[str, ...]
    measures: tuple[str, ...]
    comparisons: tuple[Comparison, ...] = ()
    robust: tuple[str, ...] = ()  # measures judged for seed robustness at every level
    thresholds: tuple[Threshold, ...] = ()  # does a level show a phenomenon at all (its measure beyond a bound)
    fixed: str = "the lab's base recipe (Pythia's, at LAB_BASE's size)"
    init_source: str | None = None  # the level whose seed-0 suite's final checkpoint the final-* inits read
    notes: tuple[str, ...] = field(default=())
    base: str = "lab"  # the recipe the levels change, a name of `RECIPES` (see `recipe`)

    def base_config(self, tiny: bool) -> SuiteConfig:
        """The recipe the levels change (its --tiny version with `tiny`)."""
        return recipe(self.base, tiny)

    def verdicts(self, measurements: pd.DataFrame, total_steps: int) -> pd.DataFrame:
        """The verdict table, from measurements (level, seed, metric, value) read from the store."""
        table = effects(measurements)
        rows = [judge(c, table) for c in self.comparisons]
        rows += [judge_threshold(t, table) for t in self.thresholds]
        rows += [robustness(m, level.name, table, total_steps) for level in self.levels for m in self.robust]
        return pd.DataFrame(rows, columns=["statement", "metric", "level", "baseline", "effect", "noise", "threshold", "verdict"])


def _levels(*pairs) -> tuple[Level, ...]:
    return tuple(Level(name, tuple(changes.items())) for name, changes in pairs)


# demo-recipe (issue 18): the default suite lacks two of Pythia's phenomena; which of depth, width and schedule
# brings them back? Size levels keep the base's training compute (FLOPs ~ tokens x (12 L d^2 + d V)): a deeper
# or wider model sees fewer tokens a step, a narrower one more. Schedule levels change no size, so cost the same.
DEMO_LEVELS = _levels(
    ("base", {}),
    ("6-layers", {"n_layers": 6, "batch_size": 6}),  # Pythia-70m's depth; 1.3x the FLOPs a token, 3/4 the tokens
    ("wide", {"d_model": 96, "d_mlp": 384, "batch_size": 4}),  # 1.9x the FLOPs a token, half the tokens
    ("narrow", {"d_model": 32, "d_mlp": 128, "batch_size": 24}),  # 0.35x the FLOPs a token, 3x the tokens
    ("wd-4.2", {"weight_decay_timescale": 4.2}),  # 3x Pythia's decay timescale: matrices relax 3x faster
    ("2x-steps", {"total_steps": 1200, "batch_size": 4}),  # the same tokens in twice the optimiser steps
    # Adam moves each entry at most about lr a step, so a parameter that weight decay skips (the layer-norm
    # gains) travels at most ~peak lr x steps in a run: 143 in Pythia-70m, 0.6 here. 8e-3 is also Pythia-70m's
    # 1e-3 at d_model 512 scaled to d_model 64 by the usual 1/width rule for Adam on hidden matrices.
    ("lr-8e-3", {"peak_lr": 8e-3}),
    ("lr-8e-3-wd-4.2", {"peak_lr": 8e-3, "weight_decay_timescale": 4.2}),
    ("lr-8e-3-wd-8.4", {"peak_lr": 8e-3, "weight_decay_timescale": 8.4}),
    ("6-layers-lr-8e-3-wd-4.2", {"n_layers": 6, "batch_size": 6, "peak_lr": 8e-3, "weight_decay_timescale": 4.2}),
)
UNEMBED_DECLINE = 0.05  # "falls late": W_U ends more than 5% below its peak (the demo suite: 0.9% below)
# (level, baseline): each single factor against the base, decay at the high lr, depth at the high-lr recipe
DEMO_PAIRS = [(level.name, "base") for level in DEMO_LEVELS[1:]] + [
    ("lr-8e-3-wd-4.2", "lr-8e-3"), ("6-layers-lr-8e-3-wd-4.2", "lr-8e-3-wd-4.2")]  # fmt: skip


def _demo_comparisons() -> tuple[Comparison, ...]:
    return tuple(c for level, baseline in DEMO_PAIRS for c in (
        Comparison(f"{level} makes W_U's norm fall more after its peak than {baseline}", "unembed_norm_decline", level, baseline),
        Comparison(f"{level} moves the largest-ever outlier toward the middle blocks (vs {baseline})", "outlier_mid_ratio", level, baseline),
    ))  # fmt: skip


def _demo_thresholds() -> tuple[Threshold, ...]:
    return tuple(t for level in DEMO_LEVELS for t in (
        Threshold(f"{level.name}: W_U's norm ends more than {UNEMBED_DECLINE:.0%} below its peak", "unembed_norm_decline", level.name, UNEMBED_DECLINE),
        Threshold(f"{level.name}: the largest-ever outlier peaks in a middle block", "outlier_mid_ratio", level.name, 1.0),
    ))  # fmt: skip


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(
        name="heavy-tails",
        question="Do heavy-tailed weight distributions come from the data's heavy-tailed token frequencies?",
        factor="token_stream: i.i.d. Zipf(1) tokens vs i.i.d. uniform tokens over the same vocabulary",
        levels=_levels(("zipf", {"token_stream": "zipf"}), ("uniform", {"token_stream": "uniform"})),
        analyses=("weight_distributions",),
        measures=("weight_kurtosis_final", "student_t_nu_final"),
        comparisons=(
            Comparison("Zipf tokens give heavier-tailed weights (excess kurtosis) than uniform tokens",
                       "weight_kurtosis_final", "zipf", "uniform", "greater"),
            Comparison("Zipf tokens give heavier-tailed weights (smaller Student-t nu) than uniform tokens",
                       "student_t_nu_final", "zipf", "uniform", "less"),
        ),
    ),
    Preset(
        name="outliers-adam",
        question="Do residual-stream outliers and massive activations come from Adam (and need trained layer-norm gains)?",
        factor="optimizer: AdamW vs SGD with momentum 0.9 (same schedule, peak lr 0.1); layer-norm gains trained or fixed at 1",
        levels=_levels(("adamw", {}), ("sgd", {"optimizer": "sgd"}), ("adamw-fixed-ln", {"train_norm_gains": False})),
        analyses=("eval_loss", "residual_outliers", "massive_activations"),
        measures=("massive_ratio_final", "outlier_ratio_final", "eval_loss_final"),
        comparisons=(
            Comparison("AdamW gives larger massive activations than SGD", "massive_ratio_final", "adamw", "sgd"),
            Comparison("AdamW gives larger residual outliers than SGD", "outlier_ratio_final", "adamw", "sgd"),
            Comparison("Trained layer-norm gains give larger massive activations than gains fixed at 1",
                       "massive_ratio_final", "adamw", "adamw-fixed-ln"),
            Comparison("Trained layer-norm gains give larger residual outliers than gains fixed at 1",
                       "outlier_ratio_final", "adamw", "adamw-fixed-ln"),
        ),
        notes=("SGD reaches a higher loss in the same steps; eval_loss_final is reported so the comparison "
               "can be read against how far each run trained.",),
    ),
    Preset(
        name="norm-decline",
        question="Is the late decline of weight norms caused by weight decay?",
        factor="weight_decay_timescale (peak_lr x weight_decay x steps): 0, 1.4 (Pythia-70m's), 4.2; fixed lr and steps",
        levels=_levels(("wd-0", {"weight_decay_timescale": 0.0}), ("wd-1.4", {}),
                       ("wd-4.2", {"weight_decay_timescale": 4.2})),
        analyses=("weight_norms",),
        measures=("matrix_norm_decline", "matrix_norm_peak_step", "matrix_norm_growth"),
        comparisons=(
            Comparison("Weight decay (1.4) makes matrix norms decline more from their peak than none",
                       "matrix_norm_decline", "wd-1.4", "wd-0"),
            Comparison("Stronger weight decay (4.2) makes matrix norms decline more than 1.4",
                       "matrix_norm_decline", "wd-4.2", "wd-1.4"),
            Comparison("Weight decay (1.4) moves the matrix-norm peak earlier than none",
                       "matrix_norm_peak_step", "wd-1.4", "wd-0", "less"),
            Comparison("Weight decay (1.4) makes matrix norms grow less than none",
                       "matrix_norm_growth", "wd-1.4", "wd-0", "less"),
            Comparison("Stronger weight decay (4.2) makes matrix norms grow less than 1.4",
                       "matrix_norm_growth", "wd-4.2", "wd-1.4", "less"),
        ),
    ),
    Preset(
        name="ln-escape-decay",
        question="Do layer-norm gains grow while matrices shrink because weight decay does not apply to them?",
        factor="decay_vectors: weight decay on matrices only (GPT-NeoX) vs on every parameter (layer-norm gains and biases too)",
        levels=_levels(("ln-not-decayed", {}), ("ln-decayed", {"decay_vectors": True})),
        analyses=("weight_norms",),
        measures=("ln_gain_growth", "matrix_norm_growth", "matrix_norm_decline"),
        comparisons=(
            Comparison("Layer-norm gains grow more when weight decay skips them",
                       "ln_gain_growth", "ln-not-decayed", "ln-decayed"),
        ),
    ),
    Preset(
        name="reinit-from-end",
        question="Does starting from the final checkpoint's weight statistics (fitted or permuted) speed up training?",
        factor="init: standard vs final-fitted (Student-t fitted per matrix) vs final-permuted (entries permuted per matrix)",
        levels=_levels(("standard", {}), ("final-fitted", {"init": "final-fitted"}),
                       ("final-permuted", {"init": "final-permuted"})),
        analyses=("eval_loss", "weight_norms", "residual_outliers"),
        measures=("eval_loss_early", "eval_loss_mean", "eval_loss_final", "matrix_norm_peak_step", "outlier_crest_step"),
        comparisons=(
            Comparison("A fitted init from the final checkpoint learns faster (lower mean loss) than standard",
                       "eval_loss_mean", "final-fitted", "standard", "less"),
            Comparison("A permuted final checkpoint learns faster (lower mean loss) than standard",
                       "eval_loss_mean", "final-permuted", "standard", "less"),
            Comparison("A permuted final checkpoint has a lower loss at 10% of training than standard",
                       "eval_loss_early", "final-permuted", "standard", "less"),
        ),
        fixed="the lab's base recipe; the final checkpoint is that of the standard level's seed-0 suite",
        init_source="standard",
    ),
    Preset(
        name="warmup-events",
        question="Do the early events (norm peak, outlier crest, SVD settling, first detected event) move with the warm-up?",
        factor="warmup_fraction: 1% (Pythia's) vs 20% of training",
        levels=_levels(("warmup-1%", {}), ("warmup-20%", {"warmup_fraction": 0.2})),
        analyses=("eval_loss", "weight_norms", "residual_outliers", "svd_directions"),
        measures=("matrix_norm_peak_step", "outlier_crest_step", "svd_settle_step", "first_event_step", "top_event_step"),
        comparisons=(
            Comparison("A longer warm-up moves the matrix-norm peak later", "matrix_norm_peak_step", "warmup-20%", "warmup-1%"),
            Comparison("A longer warm-up moves the residual-outlier crest later", "outlier_crest_step", "warmup-20%", "warmup-1%"),
            Comparison("A longer warm-up moves SVD settling later", "svd_settle_step", "warmup-20%", "warmup-1%"),
            Comparison("A longer warm-up moves the first event later", "first_event_step", "warmup-20%", "warmup-1%"),
        ),
        notes=("Induction-head formation, the issue's fourth early event, needs a recipe in which a head forms: "
               "the warmup-induction preset.",),
    ),
    Preset(
        name="warmup-induction",
        question="Does induction-head formation move with the warm-up?",
        factor="warmup_fraction: 1% (the induction suite's own, Pythia's) vs 20% of training",
        levels=_levels(("warmup-1%", {}), ("warmup-20%", {"warmup_fraction": 0.2})),
        analyses=("head_scores", "eval_loss"),
        measures=("induction_formation_step", "induction_formed", "eval_loss_final"),
        comparisons=(
            Comparison("A longer warm-up moves induction-head formation later", "induction_formation_step",
                       "warmup-20%", "warmup-1%"),
        ),
        fixed="the embedded induction suite's recipe (INDUCTION_SUITE_CONFIG: 2 layers, half the rows repeated "
              "random spans, 3,000 steps); --tiny: TINY_INDUCTION_CONFIG",
        base="induction",
        notes=("induction_formed is 1 for a seed whose best head ends with an induction score of at least 0.3; "
               "its mean is the share of seeds that formed a head (induction_formation_step is NaN for the others).",),
    ),
    Preset(
        name="demo-recipe",
        question="Which of depth, width and schedule makes the unembedding's norm fall late and the largest residual "
                 "outlier peak in the middle blocks (as in Pythia, unlike the demo suite), at the demo's compute?",
        factor="depth (6 layers), width (d_model 96 / 32, tokens a step scaled to keep the FLOPs), schedule "
               "(weight-decay timescale 4.2 / 8.4, 2x optimiser steps at half the batch, peak lr 8e-3) and combinations",
        levels=DEMO_LEVELS,
        analyses=("eval_loss", "weight_norms", "residual_outliers"),
        measures=("unembed_norm_decline", "outlier_mid_ratio", "outlier_peak_depth", "matrix_norm_decline", "eval_loss_final"),
        comparisons=_demo_comparisons(),
        thresholds=_demo_thresholds(),
        fixed="LAB_BASE apart from each level's fields (the base level is LAB_BASE itself)",
        notes=("outlier_peak_depth is reported (0 first block, 1 last); outlier_mid_ratio > 1 is the same "
               "statement as a number seed means can judge.",),
    ),
    Preset(
        name="seed-noise",
        question="Which phenomena and event times are robust to the seed (the yardstick for every other preset)?",
        factor="seed only (corpus sample, held-out split, init and batch order)",
        levels=_levels(("default", {})),
        analyses=("eval_loss", "weight_norms", "residual_outliers", "massive_activations", "weight_distributions"),
        measures=("eval_loss_final", "matrix_norm_peak_step", "matrix_norm_decline", "ln_gain_growth",
                  "weight_kurtosis_final", "massive_ratio_final", "outlier_ratio_final", "outlier_crest_step",
                  "first_event_step"),
        robust=("eval_loss_final", "matrix_norm_peak_step", "matrix_norm_decline", "ln_gain_growth",
                "weight_kurtosis_final", "massive_ratio_final", "outlier_ratio_final", "outlier_crest_step",
                "first_event_step"),
    ),
]}  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"no preset named {name!r}.{hint} Presets: {', '.join(PRESETS)} (or 'all')")
    return PRESETS[name]
