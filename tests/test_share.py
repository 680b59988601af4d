"""Stores as Hugging Face datasets (push, pull) and SQL over stores, offline against a Hub-style cache."""

from __future__ import annotations

import pandas as pd
import pytest

from pythia_dynamics import share
from pythia_dynamics.sources import write_hub_cache
from pythia_dynamics.store import Store, StoreError
from pythia_dynamics.sweeps import sweep


@pytest.fixture(scope="module")
def swept(random_suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("share") / "store"
    sweep(random_suite, out, steps="0,2,4", analyses="weight_norms,spectra", progress=False)
    return Store(out)


def store_files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def published(swept, tmp_path, repo_id="my-lab/random-tiny-dynamics"):
    folder = share.push(swept, repo_id, dry_run=tmp_path / "dataset")
    cache = tmp_path / "hub-cache"
    write_hub_cache(cache, repo_id, {"main": folder}, repo_type="dataset")
    return folder, cache


def test_dry_run_writes_the_store_and_a_card_that_datasets_reads_per_configuration(swept, tmp_path):
    import datasets

    folder = share.push(swept, "my-lab/random-tiny-dynamics", dry_run=tmp_path / "dataset")
    files = store_files(folder)
    card = files.pop("README.md").decode()
    assert files == store_files(swept.path)  # the store, bit for bit
    assert "config_name: weight_norms\n" in card and "config_name: spectra-arrays\n" in card
    assert "config_name: weight_norms-arrays" not in card  # weight_norms has no arrays
    assert "| `random-tiny` | 3 | 0 | 4 |" in card
    loaded = datasets.load_dataset(str(folder), "weight_norms", split="train", cache_dir=str(tmp_path / "datasets-cache"))
    key = ["step", "component", "layer", "head", "stat"]
    pd.testing.assert_frame_equal(comparable(loaded.to_pandas(), key), comparable(swept.scalars(analysis="weight_norms"), key))
    arrays = datasets.load_dataset(str(folder), "spectra-arrays", split="train", cache_dir=str(tmp_path / "datasets-cache"))
    key = ["step", "component", "layer", "head", "name"]
    got, expected = comparable(arrays.to_pandas(), key), comparable(swept.arrays(analysis="spectra"), key)
    assert got[key].equals(expected[key])
    assert all(list(a) == list(b) for a, b in zip(got["values"], expected["values"], strict=True))


def comparable(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Rows in one order, with the null layer/head as -1 (datasets reads nullable ints as floats)."""
    df = df.assign(**{c: pd.to_numeric(df[c]).fillna(-1).astype(int) for c in ("layer", "head")})
    df = df.astype({c: str for c in ("model", "analysis", "component", "stat", "name") if c in df} | {"step": int})
    return df.sort_values(key).reset_index(drop=True)[[c for c in df.columns if c in (*key, "model", "value", "values")]]


def test_pull_gives_the_store_back_bit_for_bit_offline(swept, tmp_path):
    _, cache = published(swept, tmp_path)
    pulled = share.pull("my-lab/random-tiny-dynamics", tmp_path / "pulled", cache_dir=cache)
    assert store_files(pulled.path) == store_files(swept.path)
    assert pulled.verify() == []
    with pytest.raises(StoreError, match="not empty"):
        share.pull("my-lab/random-tiny-dynamics", tmp_path / "pulled", cache_dir=cache)


def test_push_uploads_that_folder_with_huggingface_hub(swept, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, *, folder_path, **kwargs):
        calls["upload_folder"] = (store_files(folder_path), kwargs)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = share.push(swept, "my-lab/x", private=True)
    assert url.endswith("datasets/my-lab/x")
    assert calls["create_repo"] == ("my-lab/x", {"repo_type": "dataset", "private": True, "exist_ok": True})
    uploaded, kwargs = calls["upload_folder"]
    assert uploaded == store_files(share.push(swept, "my-lab/x", dry_run=tmp_path / "dry"))
    assert kwargs["repo_id"] == "my-lab/x" and kwargs["repo_type"] == "dataset"
    with pytest.raises(ValueError, match="ORG/NAME"):
        share.push(swept, "no-org", dry_run=tmp_path / "other")


def test_a_damaged_store_is_not_published(swept, tmp_path):
    import shutil

    copy = Store(shutil.copytree(swept.path, tmp_path / "copy"))
    victim = next(copy.path.rglob("step2.scalars.parquet"))
    victim.write_bytes(victim.read_bytes()[:50])
    with pytest.raises(StoreError, match="damaged result"):
        share.push(copy, "my-lab/x", dry_run=tmp_path / "dataset")


def test_sql_equals_the_pandas_tables(swept, tmp_path):
    got = swept.sql(
        "SELECT step, layer, value FROM scalars WHERE analysis = 'weight_norms' AND component = 'W_out' "
        "AND stat = 'frobenius_norm' ORDER BY step, layer"
    )
    expected = swept.scalars(analysis="weight_norms", component="W_out", stat="frobenius_norm")
    assert got["value"].tolist() == expected["value"].tolist() and got["step"].tolist() == expected["step"].tolist()
    counts = swept.sql("SELECT analysis, count(*) AS n FROM arrays GROUP BY analysis")
    assert counts.set_index("analysis")["n"].to_dict() == swept.arrays().groupby("analysis").size().to_dict()
    lengths = swept.sql("SELECT len(values) AS n FROM arrays WHERE name = 'singular_values' ORDER BY step, component, layer, head")
    assert lengths["n"].tolist() == [len(v) for v in swept.arrays(name="singular_values")["values"]]


def test_sql_leaves_out_damaged_results_and_reads_published_stores(swept, tmp_path):
    import shutil

    copy = Store(shutil.copytree(swept.path, tmp_path / "copy"))
    victim = next(copy.path.rglob("weight_norms/step2.scalars.parquet"))
    victim.write_bytes(victim.read_bytes()[:50])
    steps = copy.sql("SELECT DISTINCT step FROM scalars WHERE analysis = 'weight_norms' ORDER BY step")
    assert steps["step"].tolist() == [0, 4]
    empty = Store.create(tmp_path / "empty").sql("SELECT count(*) AS n FROM scalars")
    assert empty["n"].tolist() == [0]

    _, cache = published(swept, tmp_path)
    published_store = share.published_store("hf://datasets/my-lab/random-tiny-dynamics", cache_dir=cache)
    assert share.query(published_store, "SELECT count(*) AS n FROM scalars")["n"].item() == len(swept.scalars())


def test_sweep_reuses_exactly_the_published_results_that_match(swept, random_suite, tmp_path):
    import shutil

    _, cache = published(swept, tmp_path)
    reuse = share.published_store("my-lab/random-tiny-dynamics", cache_dir=cache)
    # A suite whose step 2 was retrained: its published results no longer describe these weights.
    suite = shutil.copytree(random_suite, tmp_path / "suite")
    shutil.copy(random_suite / "step8" / "model.safetensors", suite / "step2" / "model.safetensors")
    out = tmp_path / "mine"
    summary = sweep(suite, out, steps="0,2,4,8", analyses="weight_norms,spectra", reuse=reuse, progress=False)
    assert sorted(summary.reused) == [(s, a) for s in (0, 4) for a in ("spectra", "weight_norms")]
    assert summary.done == [2, 8] and "reused:    4 result(s) of 2 checkpoint(s)" in str(summary)
    for step in (0, 4):  # taken file for file
        for path in (swept.path / "results").rglob(f"step{step}.*.parquet"):
            assert (out / path.relative_to(swept.path)).read_bytes() == path.read_bytes()
    computed = Store(out).scalars(analysis="weight_norms", steps=[2])
    assert not computed["value"].equals(swept.scalars(analysis="weight_norms", steps=[2])["value"])
    assert Store(out).verify() == []


def test_results_computed_another_way_are_not_reused(swept, tmp_path, random_suite):
    _, cache = published(swept, tmp_path)
    reuse = share.published_store("my-lab/random-tiny-dynamics", cache_dir=cache)
    summary = sweep(random_suite, tmp_path / "processed", steps="0", analyses="weight_norms", processed=True,
                    reuse=reuse, progress=False)  # fmt: skip
    assert summary.reused == [] and summary.done == [0]


def test_cli_push_pull_and_query(swept, tmp_path, capsys, monkeypatch):
    from pythia_dynamics.cli import main

    assert main(["push", str(swept.path), "my-lab/cli", "--dry-run", str(tmp_path / "dataset")]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    write_hub_cache(tmp_path / "cache", "my-lab/cli", {"main": tmp_path / "dataset"}, repo_type="dataset")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["pull", "my-lab/cli", "--out", str(tmp_path / "pulled")]) == 0
    assert store_files(tmp_path / "pulled") == store_files(swept.path)
    capsys.readouterr()
    sql = "SELECT step, count(*) AS n FROM scalars WHERE analysis = 'weight_norms' GROUP BY step ORDER BY step"
    assert main(["query", str(tmp_path / "pulled"), sql, "--csv", str(tmp_path / "q.csv")]) == 0
    expected = swept.scalars(analysis="weight_norms").groupby("step").size()
    assert pd.read_csv(tmp_path / "q.csv").set_index("step")["n"].to_dict() == expected.to_dict()
    assert main(["query", str(tmp_path / "pulled"), "SELEC oops"]) == 2
    err = capsys.readouterr().err
    assert "the query failed" in err and "scalars(model, step, analysis" in err
