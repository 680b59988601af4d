"""Weights analyses are `fn(model)` (or `fn(model, references=...)`): no argument accepted and ignored."""

import inspect

import pytest

from pythia_dynamics.analyses import registered_analyses

WEIGHTS_ANALYSES = sorted(name for name, analysis in registered_analyses().items() if analysis.needs == "weights")


def test_the_builtin_weights_analyses_are_all_checked():
    expected = {"weight_norms", "weight_distances", "weight_distributions", "spectra", "embeddings", "svd_directions"}
    assert expected <= set(WEIGHTS_ANALYSES)


@pytest.mark.parametrize("name", WEIGHTS_ANALYSES)
def test_weights_analysis_takes_the_model_alone_positionally(name):
    fn = registered_analyses()[name].fn
    parameters = inspect.signature(inspect.unwrap(fn)).parameters
    assert "passes" not in parameters
    positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert [p.name for p in positional] == ["model"]
    # a second positional argument (the old, ignored `passes`) is refused before any work is done
    with pytest.raises(TypeError, match="positional argument"):
        fn(object(), None)
