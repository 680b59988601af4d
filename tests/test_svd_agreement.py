import numpy as np
import pandas as pd
import pytest

from pythia_dynamics import sweep
from pythia_dynamics.analyses.svd_directions import svd_strings
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import Store, array_record
from pythia_dynamics.svd_agreement import aggregate, stored_strings, svd_agreement

N, K = 4, 6
NO_SCALARS = pd.DataFrame(columns=["component", "layer", "head", "stat", "value"])


def final_sides() -> tuple[np.ndarray, np.ndarray]:
    """Direction i's top tokens are 100 i + 0..K-1, its bottom tokens 100 i + 50 + 0..K-1: all disjoint."""
    top = np.array([[100 * i + p for p in range(K)] for i in range(N)])
    return top, top + 50


def write(store: Store, model: str, step: int, matrices: dict[tuple, tuple[np.ndarray, np.ndarray | None]]):
    rows = []
    for (component, layer, head), (top, bottom) in matrices.items():
        rows.append(array_record(component, layer, head, "top_token_ids", top))
        if bottom is not None:
            rows.append(array_record(component, layer, head, "bottom_token_ids", bottom))
    store.write_result(model, step, "svd_directions", NO_SCALARS, rows)


@pytest.fixture
def planted_store(tmp_path):
    """Model "m": step 300 is final; earlier steps are edits of it with known agreement."""
    store = Store.create(tmp_path / "store", fsync=False)
    top, bottom = final_sides()
    flipped_top, flipped_bottom = top.copy(), bottom.copy()
    flipped_top[0], flipped_bottom[0] = bottom[0], top[0]  # direction 0's sign flipped
    swapped_top, swapped_bottom = top[[0, 2, 1, 3]], bottom[[0, 2, 1, 3]]  # directions 1 and 2 swap rank
    reordered = top.copy()
    reordered[3] = top[3][::-1]  # same tokens, no token at its old position (K even)
    half = top.copy()
    half[2, K // 2 :] = 999  # half the tokens replaced by one absent from every final list
    ov = {("OV", 0, h): (top, bottom) for h in range(2)}
    steps = {
        0: {("W_out", 0, None): (flipped_top, flipped_bottom), ("W_out", 1, None): (top, bottom), **ov},
        100: {("W_out", 0, None): (swapped_top, swapped_bottom), ("W_out", 1, None): (reordered, bottom), **ov},
        200: {("W_out", 0, None): (half, bottom), ("W_out", 1, None): (top, bottom), **ov},
        300: {("W_out", 0, None): (top, bottom), ("W_out", 1, None): (top, bottom), **ov},
    }
    for step, matrices in steps.items():
        write(store, "m", step, matrices)
    return store


def direction_rows(df, step, layer, component="W_out"):
    rows = df[(df["step"] == step) & (df["layer"] == layer) & (df["component"] == component)]
    return rows.sort_values("direction").reset_index(drop=True)


def test_final_checkpoint_agrees_with_itself(planted_store):
    df = svd_agreement(planted_store, level="direction")
    final = df[df["step"] == 300]
    assert len(final) == 4 * N and (final[["exact", "in_final", "matched"]] == 1.0).all().all()
    assert (final["matched_direction"] == final["direction"]).all() and (final["matched_sign"] == 1).all()
    assert (final["fraction_of_training"] == 1.0).all() and (df["final_step"] == 300).all()


def test_a_sign_flip_is_caught_only_by_the_robust_match(planted_store):
    rows = direction_rows(svd_agreement(planted_store, level="direction"), 0, 0)
    assert rows.loc[0, ["exact", "in_final"]].tolist() == [0.0, 0.0]
    assert rows.loc[0, "matched"] == 1.0 and rows.loc[0, "matched_sign"] == -1 and rows.loc[0, "matched_direction"] == 0
    assert (rows.loc[1:, ["exact", "in_final", "matched"]] == 1.0).all().all()


def test_swapped_directions_are_matched_to_each_other(planted_store):
    rows = direction_rows(svd_agreement(planted_store, level="direction"), 100, 0)
    assert rows["exact"].tolist() == [1.0, 0.0, 0.0, 1.0] and rows["in_final"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert rows["matched"].tolist() == [1.0] * N
    assert rows["matched_direction"].tolist() == [0, 2, 1, 3] and (rows["matched_sign"] == 1).all()


def test_exact_counts_positions_and_in_final_counts_membership(planted_store):
    df = svd_agreement(planted_store, level="direction")
    reordered = direction_rows(df, 100, 1).loc[3]
    assert (reordered["exact"], reordered["in_final"], reordered["matched"]) == (0.0, 1.0, 1.0)
    half = direction_rows(df, 200, 0).loc[2]
    assert (half["exact"], half["in_final"], half["matched"]) == (0.5, 0.5, 0.5)
    assert (df["matched"] >= df["in_final"]).all() and (df["in_final"] >= df["exact"]).all()


def test_block_and_model_levels_average_as_documented(planted_store):
    directions = svd_agreement(planted_store, level="direction")
    blocks = svd_agreement(planted_store, level="block")
    models = svd_agreement(planted_store, level="model")
    heads = svd_agreement(planted_store, level="head")
    step0 = blocks[(blocks["step"] == 0) & (blocks["component"] == "W_out")].set_index("layer")
    assert step0.loc[0, "exact"] == pytest.approx(3 / 4) and step0.loc[0, "matched"] == 1.0
    assert step0.loc[0, "n_directions"] == N
    ov_block = blocks[(blocks["component"] == "OV") & (blocks["step"] == 0)]
    assert ov_block["n_directions"].item() == 2 * N  # both heads' directions together
    assert len(heads[(heads["component"] == "OV") & (heads["step"] == 0)]) == 2
    w_out = directions[directions["component"] == "W_out"]
    expected = w_out.groupby(["step", "layer"])["exact"].mean().groupby("step").mean()
    got = models[models["component"] == "W_out"].set_index("step")["exact"]
    pd.testing.assert_series_equal(got, expected, check_names=False)
    assert models.loc[models["step"] == 100, "fraction_of_training"].iloc[0] == pytest.approx(1 / 3)
    pd.testing.assert_frame_equal(aggregate(directions, "block"), blocks)


def test_final_step_override_and_several_models(planted_store, tmp_path):
    df = svd_agreement(planted_store, level="direction", final_step=200)
    rows = direction_rows(df, 200, 0)
    assert (rows[["exact", "in_final", "matched"]] == 1.0).all().all()
    other = Store.create(tmp_path / "other", fsync=False)
    top, bottom = final_sides()
    for step in (0, 10):
        write(other, "n", step, {("W_out", 0, None): (top, None)})
    both = svd_agreement([planted_store, other], level="model")
    assert set(both["model"]) == {"m", "n"}
    n_rows = both[both["model"] == "n"]
    assert (n_rows["matched"] == 1.0).all() and n_rows["fraction_of_training"].tolist() == [0.0, 1.0]
    only = svd_agreement([planted_store, other], model="n", components="W_out", level="block")
    assert set(only["model"]) == {"n"}


def test_without_bottom_tokens_the_match_is_order_robust_only(tmp_path):
    store = Store.create(tmp_path / "s", fsync=False)
    top, bottom = final_sides()
    write(store, "m", 1, {("W_in", 0, None): (top, None)})
    write(store, "m", 0, {("W_in", 0, None): (bottom, None)})  # every direction flipped: invisible
    rows = direction_rows(svd_agreement(store, level="direction"), 0, 0, "W_in")
    assert (rows["matched"] == 0.0).all() and (rows["matched_sign"] == 1).all()


def test_bad_arguments_say_what_is_valid(planted_store, tmp_path):
    with pytest.raises(ValueError, match="level must be one of direction, head, block, model"):
        svd_agreement(planted_store, level="layer")
    with pytest.raises(ValueError, match="final_step 150 has no svd_directions result"):
        svd_agreement(planted_store, final_step=150)
    with pytest.raises(ValueError, match="no svd_directions results found"):
        svd_agreement(Store.create(tmp_path / "empty"))


def test_sweep_of_the_trained_suite(tiny_suite, tmp_path):
    summary = sweep(tiny_suite, tmp_path / "store", analyses="svd_directions", progress=False)
    assert summary.failed == [] and len(summary.done) == 9
    models = svd_agreement(tmp_path / "store", level="model")
    final = models[models["step"] == 40]
    assert (final[["exact", "in_final", "matched"]] == 1.0).all().all() and len(final) == 3
    early = models[models["step"] == 0].set_index("component")
    assert (early["in_final"] < 0.5).all()  # random initial weights share little with the trained ones
    directions = svd_agreement(tmp_path / "store", level="direction")
    assert directions[["exact", "in_final", "matched"]].apply(lambda c: c.between(0, 1)).all().all()
    # What the store holds is what svd_strings computes on the final checkpoint.
    stored = stored_strings(tmp_path / "store", steps=40, component="W_in", layer=0)
    direct = svd_strings(load_checkpoint(tiny_suite, 40).model, 0, "mlp_in")
    assert stored["token"].tolist() == direct["token"].tolist()
    assert stored["token_id"].tolist() == direct["token_id"].tolist()
    np.testing.assert_allclose(stored["logit"], direct["logit"], rtol=1e-6)
    assert stored["escaped"].tolist() == direct["escaped"].tolist()
