"""A store never mixes results computed in different ways, and damaged results are recomputed."""

from __future__ import annotations

import shutil

import pytest

from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import StoreMismatchError, sweep


def files(store) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_resuming_with_other_load_options_is_refused_before_any_write(random_suite, tmp_path):
    out = tmp_path / "store"
    sweep(random_suite, out, steps="0,2", analyses="weight_norms", progress=False)
    before = files(out)
    with pytest.raises(StoreMismatchError) as refused:
        sweep(random_suite, out, steps="4,8", analyses="weight_norms", processed=True, progress=False)
    message = str(refused.value)
    assert "weight_norms (steps 0, 2): load_options" in message and "processed=False" in message
    assert "processed=True" in message and "--recompute weight_norms" in message and "No result was written" in message
    assert files(out) == before
    # The same options resume as before.
    assert sweep(random_suite, out, steps="4,8", analyses="weight_norms", progress=False).done == [4, 8]


def test_recompute_replaces_every_stored_result_of_the_analysis(random_suite, tmp_path):
    out = tmp_path / "store"
    sweep(random_suite, out, steps="0,2,4", analyses="weight_norms", progress=False)
    summary = sweep(random_suite, out, steps="8", analyses="weight_norms", processed=True,
                    recompute="weight_norms", progress=False)  # fmt: skip
    assert summary.done == [0, 2, 4, 8]  # the stored steps too, not only the selected one
    options = {i.step: i.provenance["load_options"]["processed"] for i in Store(out).results(analyses="weight_norms")}
    assert options == {0: True, 2: True, 4: True, 8: True}
    assert Store(out).verify() == []


def test_each_result_records_how_it_was_computed(random_suite, tmp_path):
    out = tmp_path / "store"
    sweep(random_suite, out, steps="2", analyses="weight_norms,weight_distances", progress=False)
    by_analysis = {i.analysis: i.provenance for i in Store(out).results()}
    norms, distances = by_analysis["weight_norms"], by_analysis["weight_distances"]
    assert norms["load_options"] == {"backend": distances["load_options"]["backend"], "processed": False, "dtype": "float32"}
    assert norms["analysis_version"] == 1 and norms["package_version"]
    assert len(norms["content_hash"]) == 32 and norms["content_hash"] == distances["content_hash"]
    assert [distances["references"][n]["step"] for n in ("initial", "final")] == [0, 8]
    assert "references" not in norms


def test_another_final_checkpoint_is_refused_for_distances_only(random_suite, tmp_path):
    suite = shutil.copytree(random_suite, tmp_path / "suite")
    out = tmp_path / "store"
    sweep(suite, out, steps="0,2", analyses="weight_norms,weight_distances", progress=False)
    shutil.copytree(suite / "step4", suite / "step16")  # the suite grew: its final checkpoint is another one
    with pytest.raises(StoreMismatchError, match=r"weight_distances \(steps 0, 2\): references: .*step=8.*step=16"):
        sweep(suite, out, steps="4", analyses="weight_norms,weight_distances", progress=False)
    assert sweep(suite, out, steps="4", analyses="weight_norms", progress=False).done == [4]


def test_a_retrained_final_checkpoint_is_refused_by_its_content(random_suite, tmp_path):
    suite = shutil.copytree(random_suite, tmp_path / "suite")
    out = tmp_path / "store"
    sweep(suite, out, steps="0", analyses="weight_distances", progress=False)
    shutil.copy(suite / "step4" / "model.safetensors", suite / "step8" / "model.safetensors")  # same step, new weights
    with pytest.raises(StoreMismatchError, match=r"references: .*content_hash="):
        sweep(suite, out, steps="2", analyses="weight_distances", progress=False)
    assert Store(out).steps("random-tiny") == [0]


def test_a_truncated_result_is_recomputed_by_the_next_sweep(random_suite, tmp_path):
    out = tmp_path / "store"
    sweep(random_suite, out, steps="0,2", analyses="weight_norms", progress=False)
    victim = next(out.rglob("weight_norms/step2.scalars.parquet"))
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    summary = sweep(random_suite, out, steps="0,2", analyses="weight_norms", progress=False)
    assert summary.done == [2] and summary.skipped == [0]
    assert Store(out).verify() == [] and victim.read_bytes() != whole[: len(whole) // 2]


@pytest.fixture
def versioned_probe():
    """register(version) for a probe analysis; each call replaces the previous registration."""
    from pythia_dynamics.analyses.registry import _REGISTRY, register
    from pythia_dynamics.records import RecordBuilder

    def make(version: int, scale: float):
        def probe(model):
            """W_E's sum, scaled (a planted change of definition)."""
            records = RecordBuilder()
            records.scalar("W_E", "sum", scale * float(model.W_E.sum()))
            return records.build()

        _REGISTRY.pop("versioned_probe", None)
        register("versioned_probe", needs="weights", version=version)(probe)

    yield make
    _REGISTRY.pop("versioned_probe", None)


def test_a_new_analysis_version_is_refused_until_recomputed(random_suite, tmp_path, versioned_probe):
    out = tmp_path / "store"
    versioned_probe(1, 1.0)
    sweep(random_suite, out, steps="0,2", analyses="versioned_probe", progress=False)
    versioned_probe(2, 2.0)
    with pytest.raises(StoreMismatchError, match=r"versioned_probe \(steps 0, 2\): analysis_version: stored 1, this sweep 2"):
        sweep(random_suite, out, steps="4", analyses="versioned_probe", progress=False)
    old = Store(out).scalars(analysis="versioned_probe")["value"].tolist()
    summary = sweep(random_suite, out, steps="4", analyses="versioned_probe", recompute="versioned_probe", progress=False)
    assert summary.analyses == ["versioned_probe"] and summary.done == [0, 2, 4]
    assert Store(out).scalars(analysis="versioned_probe", steps=[0, 2])["value"].tolist() == [2 * v for v in old]
    assert {i.provenance["analysis_version"] for i in Store(out).results(analyses="versioned_probe")} == {2}


def strip_footers(store_path) -> None:
    """Rewrite every result as a pythia_dynamics before provenance wrote it: no footer metadata."""
    import pyarrow.parquet as pq

    for path in store_path.rglob("*.parquet"):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)


def test_results_written_before_provenance_count_as_version_1_with_the_recorded_options(random_suite, tmp_path, versioned_probe):
    out = tmp_path / "store"
    versioned_probe(1, 1.0)
    sweep(random_suite, out, steps="0,2", analyses="weight_norms,versioned_probe", progress=False)
    strip_footers(out)
    meta = Store(out).source_meta("random-tiny")
    Store(out).write_source_meta("random-tiny", meta | {"load_options": meta["load_options"] | {"backend": "auto"}})
    assert {i.provenance for i in Store(out).results()} == {None} and Store(out).verify() == []
    # Same options and versions: the old results stand and only the new steps are computed.
    assert sweep(random_suite, out, steps="0,2,4", analyses="weight_norms,versioned_probe", progress=False).done == [4]
    with pytest.raises(StoreMismatchError, match=r"weight_norms \(steps 0, 2\): load_options: stored \{processed=False"):
        sweep(random_suite, out, steps="8", analyses="weight_norms", processed=True, progress=False)
    versioned_probe(2, 2.0)
    with pytest.raises(StoreMismatchError, match=r"versioned_probe \(steps 0, 2, 4\): analysis_version: stored 1, this sweep 2"):
        sweep(random_suite, out, steps="8", analyses="versioned_probe", progress=False)
