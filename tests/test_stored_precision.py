"""Holding the model in its stored precision (how the largest Pythia models fit one GPU; docs/scale.md): the
weight analyses upcast each block's own tensors, so their results do not depend on the model's dtype."""

import pandas as pd
import pytest

from pythia_dynamics import sweep
from pythia_dynamics.store import Store

WEIGHT_ANALYSES = "weight_norms,weight_distances,weight_distributions,spectra,embeddings,svd_directions"
KEY = ["step", "analysis", "component", "layer", "head", "stat"]


@pytest.fixture(scope="module")
def float16_suite(tmp_path_factory):
    """Three random checkpoints stored in float16, as Pythia's are."""
    from pythia_dynamics.synthetic import tiny_config, write_shaped_checkpoint

    root = tmp_path_factory.mktemp("stored") / "fp16"
    for seed, step in enumerate([0, 10, 100]):
        write_shaped_checkpoint(root / f"step{step}", tiny_config(), seed=seed)
    return root


def test_weight_analyses_give_the_same_results_with_the_model_in_float16(float16_suite, tmp_path):
    results = {}
    for dtype in ("float16", "float32"):
        summary = sweep(float16_suite, tmp_path / dtype, dtype=dtype, analyses=WEIGHT_ANALYSES, audit=False, progress=False)
        assert not summary.failed
        results[dtype] = Store(tmp_path / dtype).scalars().sort_values(KEY, ignore_index=True)[[*KEY, "value"]]
    assert len(results["float16"]) > 100
    pd.testing.assert_frame_equal(results["float16"], results["float32"])
    # The provenance says how each was computed, so the two are never mixed in one store.
    info = Store(tmp_path / "float16").results(analyses=["weight_norms"])[0]
    assert info.provenance["load_options"]["dtype"] == "float16"
