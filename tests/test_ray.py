"""Sweeps on a Ray cluster (started here: two CPUs, one node): the same results as a local sweep, a worker
killed mid-task costs nothing, and a task whose retries run out leaves a store a later sweep completes."""

import logging
import signal
import threading
import time

import pandas as pd
import pytest

from pythia_dynamics import sweep
from pythia_dynamics.store import Store

ray = pytest.importorskip("ray", reason="required tool missing: ray (the test extra; pip install 'pythia-dynamics[ray]')")
psutil = pytest.importorskip("psutil", reason="required tool missing: psutil (the test extra)")

KEY = ["model", "step", "analysis", "component", "layer", "head", "stat"]
WEIGHT_ANALYSES = "weight_norms,weight_distances,spectra"


@pytest.fixture(scope="module")
def s3_bucket():
    """A moto S3 server (real HTTP, found through the AWS environment variables), started before the cluster so
    that the workers inherit where it is, as a cluster's nodes inherit their credentials."""
    import socket

    pytest.importorskip("s3fs", reason="required tool missing: s3fs (the test extra)")
    moto_server = pytest.importorskip("moto.server", reason="required tool missing: moto[server] (the test extra)")
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")):  # fmt: skip
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("ray-sweeps")
        yield "s3://ray-sweeps"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3_bucket):
    ray.init(num_cpus=2, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def long_suite(tmp_path_factory):
    """Sixteen random checkpoints: long enough to kill a worker in the middle of its run."""
    from pythia_dynamics.synthetic import tiny_config, write_random_suite

    return write_random_suite(tmp_path_factory.mktemp("ray") / "long", tiny_config(), [0, 1, 2, 4, 8, 16, 32, 64, 128, 256,
                              384, 512, 640, 768, 896, 1024])  # fmt: skip


def scalars(path) -> pd.DataFrame:
    return Store(path).scalars().sort_values(KEY, ignore_index=True)


def test_a_ray_sweep_gives_exactly_the_results_of_a_local_sweep(cluster, tiny_suite, tmp_path):
    import torch

    analyses = "weight_norms,weight_distributions,eval_loss,residual_outliers,gradients,head_scores"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: float sums then add up in the same order
    try:
        local = sweep(tiny_suite, tmp_path / "local", analyses=analyses, progress=False)
    finally:
        torch.set_num_threads(threads)
    remote = sweep(tiny_suite, tmp_path / "ray", analyses=analyses, executor="ray", threads_per_worker=1, progress=False)
    assert sorted(remote.done) == sorted(local.done) and not remote.failed
    pd.testing.assert_frame_equal(scalars(tmp_path / "ray"), scalars(tmp_path / "local"))
    arrays = [Store(p).arrays(analysis="head_scores").sort_values(["step", "component", "layer", "head", "name"], ignore_index=True)
              for p in (tmp_path / "local", tmp_path / "ray")]  # fmt: skip
    assert len(arrays[0]) > 0
    for column in ("values", "text"):
        for left, right in zip(arrays[0][column], arrays[1][column], strict=True):
            assert (left is None and right is None) or list(left) == list(right)
    # The audit judged what the workers observed, and the model's source record is the local one's.
    assert Store(tmp_path / "ray").source_meta(local.model)["schedule"] == Store(tmp_path / "local").source_meta(local.model)["schedule"]
    assert set(Store(tmp_path / "ray").scalars(analysis="audit")["step"]) == set(local.done)
    # Resuming finds nothing to do, exactly as locally.
    again = sweep(tiny_suite, tmp_path / "ray", analyses=analyses, executor="ray", progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(local.done)


def _kill_a_worker_once_results_exist(store_path, model: str, killed: list) -> None:
    """Wait for the first results in the store, then SIGKILL a process running a sweep task."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (store_path / "store.json").exists() and len(Store(store_path).completed(model)) >= 3:
            for process in psutil.process_iter(["cmdline"]):
                if any("_sweep_chunk" in part for part in process.info["cmdline"] or []):
                    before = {p: p.stat().st_mtime_ns for p in store_path.rglob("*.scalars.parquet")}
                    process.send_signal(signal.SIGKILL)
                    killed.append(before)
                    return
        time.sleep(0.02)


def _sweep_killing_a_worker(suite, tmp_path):
    """A local sweep, then a Ray sweep of the same checkpoints during which a worker is killed: both summaries,
    and the store's scalars files' mtimes at the kill."""
    local = sweep(suite, tmp_path / "local", analyses=WEIGHT_ANALYSES, audit=False, progress=False)
    killed: list = []
    watcher = threading.Thread(target=_kill_a_worker_once_results_exist, args=(tmp_path / "ray", local.model, killed))
    watcher.start()
    remote = sweep(suite, tmp_path / "ray", analyses=WEIGHT_ANALYSES, executor="ray", audit=False, progress=False)
    watcher.join()
    assert killed, "no worker was running when the first results appeared"
    return local, remote, killed[0]


def test_a_killed_worker_is_retried_and_loses_and_repeats_nothing(cluster, long_suite, tmp_path):
    local, remote, before_kill = _sweep_killing_a_worker(long_suite, tmp_path)
    assert not remote.failed and sorted(set(remote.done)) == sorted(local.done)
    pd.testing.assert_frame_equal(scalars(tmp_path / "ray"), scalars(tmp_path / "local"), check_exact=False, rtol=1e-6)
    # Results written before the kill were not written again by the retried task.
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.scalars.parquet")}
    assert all(after[p] == mtime for p, mtime in before_kill.items())


def test_a_task_out_of_retries_leaves_a_store_a_later_sweep_completes(cluster, long_suite, tmp_path, monkeypatch):
    import pythia_dynamics.ray_executor as ray_executor

    monkeypatch.setattr(ray_executor, "MAX_RETRIES", 0)
    _, broken, _ = _sweep_killing_a_worker(long_suite, tmp_path)
    assert broken.failed and {what for _, what, _ in broken.failed} == {"worker"}
    failures = Store(tmp_path / "ray").failures()
    assert set(failures["step"]) == {step for step, _, _ in broken.failed}
    resumed = sweep(long_suite, tmp_path / "ray", analyses=WEIGHT_ANALYSES, executor="ray", audit=False, progress=False)
    assert sorted(resumed.done) == sorted(step for step, _, _ in broken.failed) and not resumed.failed
    pd.testing.assert_frame_equal(scalars(tmp_path / "ray"), scalars(tmp_path / "local"), check_exact=False, rtol=1e-6)


def test_worker_resources_follow_the_model_size():
    from types import SimpleNamespace

    from pythia_dynamics.ray_executor import split_steps, worker_memory

    small = SimpleNamespace(hidden_size=512, num_hidden_layers=6, vocab_size=50304, intermediate_size=2048)
    large = SimpleNamespace(hidden_size=2048, num_hidden_layers=24, vocab_size=50304, intermediate_size=8192)
    # pythia-70m: 70M parameters (embeddings included) x (4 bytes model + 2 x 2 bytes reads) + 1 GiB
    assert worker_memory(small) == pytest.approx(70.4e6 * 8 + 2**30, rel=0.02)
    assert worker_memory(large, "float16") < worker_memory(large, "float32")
    assert worker_memory(large) > 10 * 2**30  # pythia-1.4b: far more than the default 1 GiB
    chunks = split_steps({s: ["a"] for s in range(10)}, 3)
    assert [list(c) for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_steps({1: ["a"]}, 4) == [{1: ["a"]}]


def test_ray_options_are_checked_before_anything_is_written(tmp_path, random_suite):
    with pytest.raises(ValueError, match="executor must be one of"):
        sweep(random_suite, tmp_path / "a", executor="dask", progress=False)
    with pytest.raises(ValueError, match="reuse= is not supported with executor='ray'"):
        sweep(random_suite, tmp_path / "b", executor="ray", reuse=tmp_path, progress=False)
    with pytest.raises(ValueError, match="threads_per_worker"):
        sweep(random_suite, tmp_path / "c", threads_per_worker=2, progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_ray_workers_write_into_one_store_at_a_url(cluster, s3_bucket, long_suite, tmp_path):
    local = sweep(long_suite, tmp_path / "local", analyses=WEIGHT_ANALYSES, audit=False, progress=False)
    remote = sweep(long_suite, f"{s3_bucket}/store", analyses=WEIGHT_ANALYSES, executor="ray", audit=False, progress=False)
    assert not remote.failed and sorted(remote.done) == sorted(local.done) and remote.store == f"{s3_bucket}/store"
    pd.testing.assert_frame_equal(scalars(f"{s3_bucket}/store"), scalars(tmp_path / "local"), check_exact=False, rtol=1e-6)


def test_a_sweep_no_node_can_run_is_refused_before_anything_is_queued(cluster, random_suite, tmp_path):
    with pytest.raises(ValueError, match="no node of the Ray cluster can run a worker.*3 CPU"):
        sweep(random_suite, tmp_path / "store", analyses="weight_norms", executor="ray", threads_per_worker=3,
              audit=False, progress=False)  # fmt: skip
    assert Store(tmp_path / "store").completed(random_suite.name) == set()


def test_cli_sweeps_on_ray(random_suite, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "pythia_dynamics.cli", "sweep", str(random_suite), "--out", str(tmp_path / "store"),
               "--analyses", "weight_norms", "--no-audit", "--executor", "ray", "--threads-per-worker", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "computed:  5 checkpoint(s)" in done.stdout
    assert set(Store(tmp_path / "store").scalars()["step"]) == {0, 1, 2, 4, 8}


def test_a_retried_task_counts_what_its_killed_attempt_wrote_as_done(random_suite, tmp_path):
    """The driver queues only checkpoints missing from the store, so a task that finds one complete at its start
    is a retry whose earlier attempt wrote it: it reports it done (computing nothing), not skipped."""
    from dataclasses import asdict

    from pythia_dynamics.loading import LoadOptions
    from pythia_dynamics.ray_executor import _sweep_chunk
    from pythia_dynamics.sources import LocalSuite

    sweep(random_suite, tmp_path / "store", steps="2", analyses="weight_norms", audit=False, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.parquet")}
    plan = {"source": LocalSuite(random_suite), "out": str(tmp_path / "store"), "load_options": asdict(LoadOptions()),
            "eval_batch": None, "chunk_size": None, "provenance": {}, "prefetch": False, "audit_steps": None,
            "threads": 1, "recomputed": []}  # fmt: skip
    result = _sweep_chunk(plan, {2: ["weight_norms"]})
    assert result["done"] == [2] and not result["failed"]
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.parquet")}  # nothing rewritten
