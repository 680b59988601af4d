"""The results store: round trips, filters, validation, atomic writes under SIGKILL and concurrency."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pythia_dynamics.store as store_module
from pythia_dynamics.store import (
    SCALAR_COLUMNS,
    Store,
    StoreError,
    array_record,
    model_from_slug,
    model_slug,
    read_arrays,
    read_scalars,
    row_to_numpy,
)

M70 = "EleutherAI/pythia-70m"
MINI = "mini-pythia"

SCALAR_DTYPES = {
    "model": "string",
    "step": "int64",
    "analysis": "string",
    "component": "string",
    "layer": "Int64",
    "head": "Int64",
    "stat": "string",
    "value": "float64",
}


def scalars_frame(step: int, n_layers: int = 2, n_heads: int = 2) -> pd.DataFrame:
    """A realistic tidy frame: per-head, per-layer and whole-model rows; values depend on step."""
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            rows.append(("W_Q", layer, head, "norm", step + 10 * layer + head))
        rows.append(("W_out", layer, None, "norm", step + 0.5 + layer))
        rows.append(("W_out", layer, None, "srank", np.nan))
    rows.append(("W_E", None, None, "norm", step + 0.25))
    return pd.DataFrame(rows, columns=["component", "layer", "head", "stat", "value"])


def all_rows(store: Store) -> list[tuple]:
    return [tuple(None if pd.isna(v) else v for v in row) for row in store.scalars().itertuples(index=False)]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "store", fsync=False)


# ---------------------------------------------------------------------------------------------
# Round trips


def test_scalars_round_trip_values_and_dtypes(store):
    given = scalars_frame(step=1000)
    store.write_result(M70, 1000, "weight_norms", given)

    got = store.scalars()
    assert {c: str(t) for c, t in got.dtypes.items()} == SCALAR_DTYPES
    assert list(got.columns) == list(SCALAR_COLUMNS)
    assert (got["model"] == M70).all() and (got["step"] == 1000).all()
    assert (got["analysis"] == "weight_norms").all()

    key = ["component", "layer", "head", "stat"]
    expected = given.astype({"layer": "Int64", "head": "Int64"}).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got[key + ["value"]].reset_index(drop=True),
        expected[key + ["value"]].astype({"component": "string", "stat": "string"}),
    )
    # The nulls are real nulls, not 0 or NaN-as-float.
    w_e = got[got["component"] == "W_E"].iloc[0]
    assert w_e["layer"] is pd.NA and w_e["head"] is pd.NA
    assert got.loc[got["stat"] == "srank", "value"].isna().all()


def test_sorted_by_model_analysis_step_component_layer_head_stat(store):
    for step in (2000, 0, 1000):
        store.write_result(MINI, step, "b", scalars_frame(step))
        store.write_result(M70, step, "a", scalars_frame(step))
    got = store.scalars()
    order = ["model", "analysis", "step", "component", "layer", "head", "stat"]
    assert got.equals(got.sort_values(order).reset_index(drop=True))
    assert list(got["step"].unique()) == [0, 1000, 2000]


def test_zero_row_result_counts_as_complete(store):
    store.write_result(M70, 5, "probe", pd.DataFrame(columns=["component", "layer", "head", "stat", "value"]))
    assert store.has_result(M70, 5, "probe")
    assert store.completed(M70) == {(5, "probe")}
    assert store.scalars().empty


def test_arrays_round_trip_shapes_and_text(store):
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(3, 4, 5))
    records = [
        array_record("attn_pattern", 1, 2, "mean_pattern", pattern),
        array_record("W_E", None, None, "svals", [3.0, 2.0, 1.0]),
        array_record("loss", None, None, "total", np.float32(2.5)),  # 0-d
        array_record("batch", None, None, "tokens", ["The", " cat", " sat"]),
        array_record("batch", None, None, "token_grid", np.array([["a", "b"], ["c", "d"]])),
    ]
    store.write_result(M70, 64, "attn", scalars_frame(64), pd.DataFrame(records))

    got = store.arrays()
    assert len(got) == 5
    assert str(got["layer"].dtype) == "Int64" and str(got["name"].dtype) == "string"
    by_name = {row["name"]: row for _, row in got.iterrows()}

    back = row_to_numpy(by_name["mean_pattern"])
    assert back.shape == (3, 4, 5) and back.dtype == np.float64
    np.testing.assert_array_equal(back, pattern)
    assert by_name["mean_pattern"]["layer"] == 1 and by_name["mean_pattern"]["head"] == 2
    assert by_name["mean_pattern"]["text"] is None
    # text=False skips the strings but keeps every row and number
    numbers = store.arrays(text=False)
    assert numbers["text"].isna().all() and list(numbers["name"]) == list(got["name"])
    np.testing.assert_array_equal(row_to_numpy(numbers[numbers["name"] == "mean_pattern"].iloc[0]), pattern)

    assert row_to_numpy(by_name["total"]).shape == () and row_to_numpy(by_name["total"]) == 2.5
    assert row_to_numpy(by_name["tokens"]).tolist() == ["The", " cat", " sat"]
    assert by_name["tokens"]["values"] is None and list(by_name["tokens"]["shape"]) == [3]
    assert row_to_numpy(by_name["token_grid"]).tolist() == [["a", "b"], ["c", "d"]]
    assert by_name["svals"]["layer"] is pd.NA

    one = store.array(M70, 64, "attn", "attn_pattern", "mean_pattern", layer=1, head=2)
    np.testing.assert_array_equal(one, pattern)
    assert store.array(M70, 64, "attn", "batch", "tokens").tolist() == ["The", " cat", " sat"]
    with pytest.raises(KeyError, match="mean_pattern"):  # the error lists what is there
        store.array(M70, 64, "attn", "attn_pattern", "mean_pattern", layer=0, head=2)


def test_array_record_accepts_torch_tensors_including_bf16():
    torch = pytest.importorskip("torch", reason="required tool missing: torch")
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).requires_grad_()
    record = array_record("W_in", 0, None, "w", t)
    assert record["shape"] == [2, 3]
    np.testing.assert_array_equal(row_to_numpy(record), np.arange(6.0).reshape(2, 3))


def test_list_of_records_accepted_for_arrays(store):
    store.write_result(M70, 1, "a", scalars_frame(1), [array_record("W_U", None, None, "x", np.eye(2))])
    np.testing.assert_array_equal(store.array(M70, 1, "a", "W_U", "x"), np.eye(2))


NO_ARRAYS = [None, [], pd.DataFrame(columns=["component", "layer", "head", "name", "shape"])]


@pytest.mark.parametrize("no_arrays", NO_ARRAYS)
def test_rewrite_without_arrays_drops_stale_arrays(store, no_arrays):
    store.write_result(M70, 1, "a", scalars_frame(1), [array_record("W_U", None, None, "x", np.eye(2))])
    store.write_result(M70, 1, "a", scalars_frame(1), no_arrays)
    assert store.arrays().empty and store.has_result(M70, 1, "a")
    assert not any(store.path.rglob("*.arrays.parquet"))  # no file for zero rows, and no stale one


def test_empty_store_gives_typed_empty_frames(store):
    s, a = store.scalars(), store.arrays()
    assert s.empty and {c: str(t) for c, t in s.dtypes.items()} == SCALAR_DTYPES
    assert a.empty and list(a.columns) == "model step analysis component layer head name shape values text".split()
    assert store.models() == [] and store.analyses() == [] and store.completed(M70) == set()
    assert store.failures().empty
    assert list(store.failures().columns) == ["model", "step", "analysis", "time", "message"]


# ---------------------------------------------------------------------------------------------
# Listings and filters


@pytest.fixture
def filled(store) -> Store:
    for model in (M70, MINI):
        for analysis in ("norms", "attn"):
            for step in (0, 512, 1000):
                store.write_result(model, step, analysis, scalars_frame(step))
    return store


def test_listings(filled):
    assert filled.models() == [M70, MINI]
    assert filled.analyses() == ["attn", "norms"] and filled.analyses(M70) == ["attn", "norms"]
    assert filled.steps(M70) == [0, 512, 1000] and filled.steps(M70, "attn") == [0, 512, 1000]
    assert filled.completed(MINI) == {(s, a) for s in (0, 512, 1000) for a in ("norms", "attn")}
    assert filled.has_result(M70, 512, "norms") and not filled.has_result(M70, 513, "norms")
    assert filled.completed("EleutherAI/pythia-160m") == set()


@pytest.mark.parametrize(
    "filters",
    [
        dict(model=M70),
        dict(model=[MINI]),
        dict(analysis="attn"),
        dict(component="W_out"),
        dict(component=["W_E", "W_Q"], model=MINI),
        dict(layer=1),
        dict(layer=[0, None]),
        dict(head=[1]),
        dict(steps=[0, 1000]),
        dict(steps=512, analysis="norms", stat="norm"),
        dict(stat="srank", layer=0),
        dict(model="not-there"),
    ],
)
def test_filters_return_exactly_the_matching_rows(filled, filters):
    everything = filled.scalars()
    expected = everything
    for key, wanted in filters.items():
        column = "step" if key == "steps" else key
        wanted = wanted if isinstance(wanted, list) else [wanted]
        hit = everything[column].isin([w for w in wanted if w is not None]).fillna(False)
        if None in wanted:
            hit = hit | everything[column].isna()
        expected = expected[hit.reindex(expected.index)]
    got = filled.scalars(**filters)
    assert len(got) > 0 or filters == dict(model="not-there")
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))


def test_filters_do_not_open_other_files(filled, caplog):
    # A damaged file of another model must not even be read when filtering it out by layout.
    (filled.path / "results" / model_slug(MINI) / "norms" / "step0.scalars.parquet").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        got = filled.scalars(model=M70, analysis="norms", steps=[0])
    assert caplog.records == [] and len(got) == len(scalars_frame(0))
    with caplog.at_level(logging.WARNING):
        filled.scalars()
    assert "step0.scalars.parquet" in caplog.text


def test_arrays_filters(store):
    for step in (0, 10):
        records = [array_record("W_Q", i, None, "sv", np.arange(3.0) + i + step) for i in range(2)]
        records.append(array_record("batch", None, None, "tokens", ["x"]))
        store.write_result(M70, step, "svd", scalars_frame(step), records)
    got = store.arrays(name="sv", layer=1, steps=[10])
    assert len(got) == 1
    np.testing.assert_array_equal(row_to_numpy(got.iloc[0]), np.arange(3.0) + 11)
    assert set(store.arrays(component="batch")["step"]) == {0, 10}
    assert len(store.arrays(analysis="other")) == 0


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns=["value"]), r"missing column\(s\) \['value'\]"),
        (lambda df: df.drop(columns=["layer"]), r"missing column\(s\) \['layer'\]"),
        (lambda df: df.assign(position=1), r"unexpected column\(s\) \['position'\].*allowed.*'component'"),
        (lambda df: df.assign(step=[7] + [8] * (len(df) - 1)), r"'step' must be 8.*1 row\(s\) have 7"),
        (lambda df: df.assign(model="EleutherAI/pythia-160m"), r"'model' must be 'EleutherAI/pythia-70m'"),
        (lambda df: df.assign(analysis="other"), r"'analysis' must be 'norms'"),
        (lambda df: pd.concat([df, df.iloc[:1]]), r"share a \(component, layer, head, stat\) key"),
        (lambda df: df.assign(layer=0.5), r"'layer' must hold whole numbers"),
        (lambda df: df.assign(head=-1), r"'head' must be >= 0"),
        (lambda df: df.assign(value="big"), r"'value' must hold numbers"),
        (lambda df: df.assign(component=None), r"'component' must hold non-null strings"),
    ],
)
def test_bad_scalars_rejected_and_store_untouched(store, mutate, message):
    store.write_result(M70, 8, "norms", scalars_frame(8))
    before = all_rows(store)
    with pytest.raises(StoreError, match=message):
        store.write_result(M70, 8, "norms", mutate(scalars_frame(8)))
    assert all_rows(store) == before  # the earlier result for the very same key survives
    assert store.completed(M70) == {(8, "norms")}


def test_matching_identity_columns_are_accepted(store):
    df = scalars_frame(3).assign(model=M70, step=3, analysis="norms")
    store.write_result(M70, 3, "norms", df)
    assert len(store.scalars()) == len(df)


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"component": "W_Q", "layer": 0, "head": 0, "name": "x", "shape": [2, 2], "values": [1.0, 2.0, 3.0]},
            r"shape \[2, 2\] needs 4 elements, got 3",
        ),
        (
            {"component": "W_Q", "layer": 0, "head": 0, "name": "x", "shape": [1], "values": [1.0], "text": ["a"]},
            "exactly one of 'values'",
        ),
        (
            {"component": "W_Q", "layer": 0, "head": 0, "name": "x", "shape": [1], "values": ["one"]},
            "values must be a list of numbers",
        ),
        (
            {"component": "W_Q", "layer": 0, "head": 0, "name": "x", "shape": [1], "text": [1]},
            "text must be a list of strings",
        ),
        (
            {"component": "W_Q", "layer": 0, "head": 0, "name": "x", "shape": [1], "values": [1.0], "colour": 1},
            r"unexpected column\(s\) \['colour'\]",
        ),
    ],
)
def test_bad_arrays_rejected_before_anything_is_written(store, record, message):
    with pytest.raises(StoreError, match=message):
        store.write_result(M70, 1, "a", scalars_frame(1), pd.DataFrame([record]))
    assert store.completed(M70) == set()
    assert not any(store.path.rglob("*.parquet"))


def test_bad_names_rejected(store):
    with pytest.raises(StoreError, match="analysis name '../x' is not valid"):
        store.write_result(M70, 1, "../x", scalars_frame(1))
    with pytest.raises(StoreError, match="step must be a non-negative integer"):
        store.write_result(M70, -1, "a", scalars_frame(1))
    with pytest.raises(StoreError, match="non-empty string"):
        store.write_result("", 1, "a", scalars_frame(1))


def test_model_slug_is_reversible_and_filesystem_safe():
    names = [M70, MINI, "a--b", "a-/b", "a/-b", "//x", ".", "..", ".hidden", "x%y", "sp ace/ü", "-", "a/b-c"]
    slugs = [model_slug(n) for n in names]
    assert model_slug(M70) == "EleutherAI--pythia-70m" and model_slug(MINI) == MINI
    assert [model_from_slug(s) for s in slugs] == names
    assert len(set(slugs)) == len(names)
    assert all("/" not in s and not s.startswith(".") for s in slugs)


# ---------------------------------------------------------------------------------------------
# Opening, versions, several stores


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="not a pythia_dynamics store.*Store.create"):
        Store(tmp_path)
    store = Store(tmp_path, create=True)
    assert Store.create(tmp_path).info == store.info  # idempotent: store.json not rewritten
    assert store.info["schema_version"] == 1 and store.info["pythia_dynamics_version"]

    meta = json.loads((tmp_path / "store.json").read_text())
    (tmp_path / "store.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(StoreError, match=r"schema_version 99.*reads schema_version 1"):
        Store(tmp_path)
    (tmp_path / "store.json").write_text("{trunc")
    with pytest.raises(StoreError, match="not a valid store.json"):
        Store(tmp_path)


def test_read_several_stores(tmp_path, caplog):
    a, b = Store.create(tmp_path / "s70m", fsync=False), Store.create(tmp_path / "s160m", fsync=False)
    a.write_result(M70, 0, "norms", scalars_frame(0), [array_record("W_E", None, None, "sv", [1.0])])
    b.write_result("EleutherAI/pythia-160m", 0, "norms", scalars_frame(100))
    b.write_result("EleutherAI/pythia-160m", 0, "attn", scalars_frame(100))

    got = read_scalars([a.path, str(b.path)], analysis="norms", component="W_E")
    assert got["model"].tolist() == ["EleutherAI/pythia-160m", M70]  # sorted across stores
    assert got["value"].tolist() == [100.25, 0.25]
    assert str(got["layer"].dtype) == "Int64"
    assert len(read_arrays([a.path, b.path])) == 1

    with caplog.at_level(logging.WARNING):
        read_scalars([a.path, a.path])
    assert "more than one store" in caplog.text
    with pytest.raises(StoreError, match="no store paths"):
        read_scalars([])
    with pytest.raises(StoreError, match="not a pythia_dynamics store"):
        read_scalars([a.path, tmp_path])


def test_source_meta_round_trip(store):
    assert store.source_meta(M70) is None
    store.write_source_meta(M70, {"steps": [0, 1000], "eval_tokens": np.arange(4).reshape(2, 2), "seed": 0})
    assert store.source_meta(M70) == {"steps": [0, 1000], "eval_tokens": [[0, 1], [2, 3]], "seed": 0}
    assert (store.path / "sources" / "EleutherAI--pythia-70m.json").exists()
    with pytest.raises(StoreError, match="not JSON serialisable"):
        store.write_source_meta(M70, {"x": object()})
    assert store.source_meta(M70)["seed"] == 0  # the failed write left the old file alone


# ---------------------------------------------------------------------------------------------
# Failures


def test_failures_recorded_and_cleared_by_success(store):
    store.write_failure(M70, 1000, "attn", "CUDA out of memory")
    store.write_failure(M70, 2000, "attn", "NaN loss")
    store.write_failure(MINI, 0, "norms", "missing weights")

    f = store.failures()
    keys = list(zip(f["model"], f["step"], f["analysis"]))
    assert keys == [(M70, 1000, "attn"), (M70, 2000, "attn"), (MINI, 0, "norms")]
    assert f.loc[0, "message"] == "CUDA out of memory" and str(f["time"].dtype).startswith("datetime64")
    assert len(store.failures(MINI)) == 1

    store.write_result(M70, 1000, "attn", scalars_frame(1000))
    assert list(zip(store.failures()["step"], store.failures()["analysis"])) == [(2000, "attn"), (0, "norms")]
    assert not store.has_result(M70, 2000, "attn")


# ---------------------------------------------------------------------------------------------
# Atomicity and damage


def test_leftover_tmp_files_are_invisible(filled):
    folder = filled.path / "results" / model_slug(M70) / "norms"
    # A writer killed mid-write leaves only a temporary; it must be invisible.
    (folder / "step5.scalars.parquet.1234.deadbeef.tmp").write_bytes(b"PAR1partial")
    (folder / "step6.arrays.parquet.1234.deadbeef.tmp").write_bytes(b"PAR1partial")
    assert (5, "norms") not in filled.completed(M70) and 5 not in filled.steps(M70)
    assert filled.verify() == []


def with_arrays(store: Store, step: int) -> Path:
    records = [array_record("W_U", None, None, "sv", np.arange(50.0) + step), array_record("W_E", None, None, "sv", [1.0])]
    store.write_result(M70, step, "spectra", scalars_frame(step), records, provenance={"analysis_version": 1})
    return store.path / "results" / model_slug(M70) / "spectra"


def test_a_truncated_result_counts_as_missing_until_repaired(filled, caplog):
    folder = filled.path / "results" / model_slug(M70) / "norms"
    victim = folder / "step512.scalars.parquet"
    victim.write_bytes(victim.read_bytes()[:40])  # what a full disk or a killed copy leaves under a final name
    with caplog.at_level(logging.WARNING):
        done = filled.completed(M70)
        got = filled.scalars(model=M70, analysis="norms")
    assert (512, "norms") not in done and (0, "norms") in done and (512, "attn") in done
    assert "step512.scalars.parquet" in caplog.text and "counts as missing" in caplog.text
    assert sorted(got["step"].unique()) == [0, 1000]
    [problem] = filled.verify()
    assert (problem.model, problem.analysis, problem.steps, problem.kind) == (M70, "norms", (512,), "damaged")
    assert "unreadable scalars file" in problem.detail and victim.exists()  # verify alone changes nothing

    assert [p.steps for p in filled.verify(repair=True)] == [(512,)]
    assert not victim.exists() and filled.verify() == []
    assert 512 not in filled.steps(M70, "norms") and 512 in filled.steps(M70, "attn")


def test_a_damaged_or_missing_arrays_file_makes_the_result_incomplete(store):
    folder = with_arrays(store, 1)
    with_arrays(store, 2)
    with_arrays(store, 3)
    (folder / "step1.arrays.parquet").unlink()
    data = (folder / "step2.arrays.parquet").read_bytes()
    (folder / "step2.arrays.parquet").write_bytes(data[: len(data) // 2])
    assert store.completed(M70) == {(3, "spectra")}
    problems = {info.step: info.problem for info in store.results(M70)}
    assert problems[1].startswith("the arrays file is missing (2 rows were written)")
    assert problems[2].startswith("unreadable arrays file") and problems[3] is None


def test_a_file_holding_other_rows_than_were_written_is_damaged(store):
    folder = with_arrays(store, 1)
    path = folder / "step1.scalars.parquet"
    table = pq.read_table(path)  # a whole, readable Parquet file, but not the one this result wrote
    pq.write_table(table.slice(0, 3).replace_schema_metadata(table.schema.metadata), path)
    [info] = store.results(M70)
    assert info.problem == f"the scalars file holds 3 rows, {len(scalars_frame(1))} were written"
    assert store.completed(M70) == set()


def test_deep_verify_reads_whole_files(store):
    folder = with_arrays(store, 1)
    path = folder / "step1.arrays.parquet"
    data = bytearray(path.read_bytes())
    footer_length = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer_length] = bytes(len(data) - footer_length - 4)  # the pages zeroed, the footer intact
    path.write_bytes(bytes(data))
    assert store.completed(M70) == {(1, "spectra")}  # footers alone look fine
    [problem] = store.verify()
    assert problem.kind == "damaged" and "unreadable arrays file" in problem.detail


def test_provenance_is_kept_in_the_footer_and_mixed_results_are_reported(store):
    for step, version in ((1, 1), (2, 1), (3, 2)):
        store.write_result(M70, step, "norms", scalars_frame(step), provenance={"analysis_version": version, "content_hash": f"h{step}"})
    assert {i.step: i.provenance["content_hash"] for i in store.results(M70)} == {1: "h1", 2: "h2", 3: "h3"}
    [problem] = store.verify()
    assert (problem.kind, problem.steps) == ("mixed", (1, 2, 3))
    assert "steps 1, 2: analysis_version 1" in problem.detail and "step 3: analysis_version 2" in problem.detail
    assert store.verify(repair=True) == [problem] and len(store.completed(M70)) == 3  # nothing to repair by deleting
    with pytest.raises(StoreError, match="not JSON serialisable"):
        store.write_result(M70, 4, "norms", scalars_frame(4), provenance={"bad": object()})
    assert not store.has_result(M70, 4, "norms")


def test_coverage_lists_what_is_missing_failed_or_damaged(filled):
    filled.write_failure(MINI, 2000, "norms", "RuntimeError: out of memory")
    (filled.path / "results" / model_slug(MINI) / "attn" / "step0.scalars.parquet").write_bytes(b"garbage")
    rows = filled.coverage().sort_values(["model", "analysis", "step"])
    got = [tuple(r) for r in rows[["model", "analysis", "step", "status"]].itertuples(index=False)]
    assert got == [(MINI, "attn", 0, "damaged"), (MINI, "attn", 2000, "missing"), (MINI, "norms", 2000, "failed")]
    assert "out of memory" in rows.query("status == 'failed'")["detail"].item()
    assert Store.create(filled.path.parent / "empty").coverage().empty


def test_write_interrupted_mid_file_leaves_no_partial_file(store, monkeypatch):
    store.write_result(M70, 1, "a", scalars_frame(1))

    def dies_half_way(table, f, **kwargs):
        f.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(store_module.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        store.write_result(M70, 2, "a", scalars_frame(2), [array_record("W_U", None, None, "x", [1.0])])
    monkeypatch.undo()

    assert store.completed(M70) == {(1, "a")}
    assert [p.name for p in store.path.rglob("*.parquet")] == ["step1.scalars.parquet"]
    assert not list(store.path.rglob("*.tmp"))  # the temporary is cleaned up too
    assert store.verify() == []


def test_arrays_without_scalars_are_not_read(store):
    # What a writer killed between its two renames leaves: the arrays file, no scalars file.
    store.write_result(M70, 1, "a", scalars_frame(1), [array_record("W_U", None, None, "x", [1.0])])
    (store.path / "results" / model_slug(M70) / "a" / "step1.scalars.parquet").unlink()
    assert store.arrays().empty and store.completed(M70) == set()


PACKAGE_DIR = str(Path(store_module.__file__).parent)

# Children load only the store module: the package __init__ imports torch and TransformerLens, which
# costs seconds per child and has nothing to do with what these tests check.
CHILD_PRELUDE = (
    f"""
import sys, types
package = types.ModuleType("pythia_dynamics")
package.__path__, package.__version__ = [{PACKAGE_DIR!r}], "0.0.test"
sys.modules["pythia_dynamics"] = package
"""
    + """
import numpy as np, pandas as pd
from pythia_dynamics.store import Store, array_record

def scalars(step, analysis):
    return pd.DataFrame({"component": ["W_out", "W_E"], "layer": [0, None], "head": [None, None],
                         "stat": ["norm", "norm"], "value": [float(step), float(len(analysis))]})

def arrays(step, n):
    # arange, not a constant: it does not compress, so each file takes a while to write
    return [array_record("W_in", 0, None, "w", np.arange(n, dtype=np.float64) + step)]
"""
)


def check_store_consistent(store: Store, n_values: int) -> set[tuple[int, str]]:
    """Every final-named file reads back whole and right; completed() is exactly the readable results."""
    readable = set()
    for path in store.path.joinpath("results").rglob("*.parquet"):
        table = pq.read_table(path)  # raises if partial
        step, kind = int(path.name.split(".")[0][4:]), path.name.split(".")[1]
        if kind == "scalars":
            assert table.column("value").to_pylist() == [float(step), float(len(path.parent.name))]
            readable.add((step, path.parent.name))
            # arrays go in before scalars, so a complete result always has its arrays
            assert path.with_name(f"step{step}.arrays.parquet").exists()
        else:
            values = table.column("values").combine_chunks().flatten().to_numpy()
            np.testing.assert_array_equal(values, np.arange(n_values, dtype=np.float64) + step)
    assert store.completed(store.models()[0]) == readable
    assert store.verify() == []
    return readable


def test_sigkill_mid_write_leaves_only_whole_files(tmp_path):
    path = tmp_path / "store"
    Store.create(path)
    n_values = 300_000  # 2.4 MB a file, so a kill often lands mid-write
    code = CHILD_PRELUDE + textwrap.dedent(
        f"""
        store = Store({str(path)!r}, fsync=False)  # fsync guards against power loss, not kills
        for step in range(100000):
            for analysis in ("a", "bb"):
                store.write_result("m/x", step, analysis, scalars(step, analysis), arrays(step, {n_values}))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    store = Store(path)

    def wait_for(n_results: int) -> float:
        deadline = time.monotonic() + 30
        while len(store.completed("m/x")) < n_results:
            assert child.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.002)
        return time.monotonic()

    try:
        t4, t6 = wait_for(4), wait_for(6)
        # Kill at a random point of a write cycle, not always just after a result lands.
        time.sleep(random.uniform(0, (t6 - t4) / 2))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    readable = check_store_consistent(store, n_values)
    assert len(readable) >= 6
    assert len(store.scalars()) == 2 * len(readable)


def test_concurrent_writers_overlapping_results(tmp_path):
    path = tmp_path / "store"
    go = tmp_path / "go"
    steps = list(range(12))
    code = CHILD_PRELUDE + textwrap.dedent(
        f"""
        import os, time
        order = {steps!r}[::int(sys.argv[1])]
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        store = Store.create({str(path)!r}, fsync=False)  # both create the store at once
        for step in order:
            for analysis in ("a", "bb"):
                store.write_result("m/x", step, analysis, scalars(step, analysis), arrays(step, 1000))
        """
    )
    # One walks the steps forwards, the other backwards: they collide on every result.
    children = [
        subprocess.Popen([sys.executable, "-c", code, direction], stdout=subprocess.PIPE, text=True)
        for direction in ("1", "-1")
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    for child in children:
        assert child.wait(timeout=60) == 0
        child.stdout.close()

    store = Store(path)
    assert store.completed("m/x") == {(s, a) for s in steps for a in ("a", "bb")}
    check_store_consistent(store, 1000)
    assert not list(path.rglob("*.tmp"))
    assert len(store.scalars()) == 2 * 2 * len(steps)

