import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep
from pythia_dynamics.weights import component_weights


def test_distances_equal_numpy_on_the_checkpoint_files(random_suite, tmp_path, backend):
    sweep(random_suite, tmp_path / "s", analyses="weight_distances", backend=backend, progress=False)
    scalars = Store(tmp_path / "s").scalars(analysis="weight_distances")
    files = {s: load_file(random_suite / f"step{s}" / "model.safetensors") for s in (0, 4, 8)}
    name = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    w0, w4, w8 = (files[s][name].astype(np.float64) for s in (0, 4, 8))

    def value(step, stat):
        return scalars.query(f"step == {step} and component == 'W_in' and layer == 1 and stat == '{stat}'")["value"].item()

    assert value(4, "distance_from_initial") == pytest.approx(np.linalg.norm(w4 - w0), rel=1e-6)
    assert value(4, "relative_distance_from_initial") == pytest.approx(np.linalg.norm(w4 - w0) / np.linalg.norm(w0), rel=1e-6)
    assert value(4, "distance_to_final") == pytest.approx(np.linalg.norm(w4 - w8), rel=1e-6)
    assert value(0, "distance_from_initial") == 0 and value(8, "distance_to_final") == 0
    # step 1 is a copy of step 0 in this suite
    assert value(1, "distance_from_initial") == 0


def test_zero_initial_weights_give_nan_relative_distance(random_suite):
    model = load_checkpoint(random_suite, 4).model
    references = {"initial": {k: v * 0 for k, v in component_weights(model).items()}, "final": component_weights(model)}
    records = get_analysis("weight_distances").run(model, references=references)
    rel = records.scalars.query("stat == 'relative_distance_from_initial'")["value"]
    assert rel.map(math.isnan).all()
    with pytest.raises(ValueError, match="compares against reference checkpoints"):
        get_analysis("weight_distances").run(model)
