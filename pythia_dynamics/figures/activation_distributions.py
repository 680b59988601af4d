"""Residual-stream and gradient distributions: the weight-distribution figures, on other components."""

from __future__ import annotations

from pythia_dynamics.figures.curves import per_block_curves
from pythia_dynamics.figures.sections import Section, SectionInputs, section
from pythia_dynamics.figures.weight_distributions import animated_reads, distribution_figures

RESIDUAL = ["hook_resid_post", "hook_resid_pre", "ln_final.hook_normalized"]
GRADIENTS = ["grad.W_out", "grad.W_in", "grad.W_QKV", "grad.W_O", "grad.hook_resid_post"]
# The components animated as histograms and QQ plots (the rest are summarised per block).
RESIDUAL_ANIMATED = ["hook_resid_post"]
GRADIENTS_ANIMATED = ["grad.W_out", "grad.hook_resid_post"]


@section("residual_distributions", arrays=animated_reads(RESIDUAL_ANIMATED))
def residual_distributions_section(inputs: SectionInputs) -> Section:
    figures, notes = distribution_figures(inputs, RESIDUAL_ANIMATED, RESIDUAL, value="activation x")
    return Section(
        "Residual-stream distributions",
        intro=(
            "Every activation of the evaluation batch at each block's hook_resid_post (histogram and QQ animations), "
            "and the fitted tail parameters over training at every residual hook point. Histograms use fixed "
            "symmetric-log bins out to ±10,000 (linear within 0.01); fits use a seeded sample of 50,000 values."
        ),
        figures=figures,
        notes=notes,
    )


@section("gradients", arrays=animated_reads(GRADIENTS_ANIMATED))
def gradients_section(inputs: SectionInputs) -> Section:
    norms = per_block_curves(
        inputs.scalars, "grad_frobenius_norm", title="‖∂L/∂W‖_F of the evaluation-batch loss", y_title="‖∂L/∂W‖_F"
    )
    figures, notes = distribution_figures(inputs, GRADIENTS_ANIMATED, GRADIENTS, value="gradient g")
    return Section(
        "Gradients",
        intro=(
            "One backward pass of the mean next-token loss on the evaluation batch per checkpoint: gradient norms of "
            "every weight, and the distributions of the MLP output weights' gradients (as the study plotted) and "
            "of the residual stream's gradients (backward hooks at hook_resid_post). Bins: symmetric-log to ±1, "
            "linear within 1e-7."
        ),
        figures=norms + figures,
        notes=notes,
    )
