"""Stores at an fsspec URL, against a real S3-compatible server (moto's standalone server, started here on a free
port and spoken to over HTTP by s3fs/botocore, not a mock of the client) and against fsspec's memory://."""

import logging
import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

import pythia_dynamics.store as store_module
from pythia_dynamics.cli import main
from pythia_dynamics.share import dataset_folder
from pythia_dynamics.storage import FsspecStorage, LocalStorage
from pythia_dynamics.store import Store, StoreError, array_record, model_slug, read_arrays, read_scalars

pytest.importorskip("s3fs", reason="required tool missing: s3fs (pip install -e '.[test]')")
moto_server = pytest.importorskip("moto.server", reason="required tool missing: moto[server] (pip install -e '.[test]')")

BUCKET = "pythia-dynamics-test"
M70 = "EleutherAI/pythia-70m"
MINI = "mini-pythia"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server for this module, found by botocore through the usual AWS environment variables."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server logs every request
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")  # dummy credentials: moto accepts any
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(params=["s3", "memory"])
def url(request):
    """A fresh store URL on S3 (moto) or in fsspec's in-memory filesystem."""
    name = f"store-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://{BUCKET}/{name}"
    return f"memory://{name}"


def scalars_frame(step: int, n_layers: int = 2) -> pd.DataFrame:
    rows = [("W_in", layer, None, "frobenius_norm", 1.0 + step + 0.5 * layer) for layer in range(n_layers)]
    rows += [("model", None, None, "loss", 10.0 / (1 + step)), ("W_Q", 0, 1, "max_abs", float("nan"))]
    return pd.DataFrame(rows, columns=["component", "layer", "head", "stat", "value"])


def arrays_rows(step: int) -> list[dict]:
    return [
        array_record("W_out", 1, None, "singular_values", np.linspace(0, 1, 5) * (step + 1)),
        array_record("W_E", None, None, "tokens", ["a", "b", f"s{step}"]),
        array_record("W_Q", 0, 2, "pattern", np.arange(6.0).reshape(2, 3)),
    ]


def fill(store: Store) -> None:
    """The same results, failure and source record in any store."""
    store.write_source_meta(M70, {"steps": [0, 1, 2], "eval": {"ids": [1, 2, 3]}})
    for step in (0, 1, 2):
        store.write_result(M70, step, "weight_norms", scalars_frame(step), provenance={"analysis_version": 1})
        store.write_result(M70, step, "spectra", scalars_frame(step, 1), arrays_rows(step), provenance={"content_hash": f"h{step}"})
    store.write_result(MINI, 4, "weight_norms", scalars_frame(4))
    store.write_failure(M70, 2, "eval_loss", "out of memory")
    store.write_result(M70, 0, "eval_loss", scalars_frame(0, 0))


def as_plain(df: pd.DataFrame) -> list[tuple]:
    """Rows with numpy arrays turned into lists, so that two tables can be compared exactly (NaN == NaN)."""
    def cell(v):
        if isinstance(v, np.ndarray):
            return tuple(v.tolist())
        if isinstance(v, float) and np.isnan(v):
            return "nan"
        return None if v is pd.NA else v
    return [tuple(cell(v) for v in row) for row in df.itertuples(index=False)]


def assert_same_tables(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and a.dtypes.to_dict() == b.dtypes.to_dict()
    assert as_plain(a) == as_plain(b)


def test_results_read_back_exactly_as_from_a_local_store(url, tmp_path):
    local, remote = Store.create(tmp_path / "local"), Store.create(url)
    fill(local)
    fill(remote)
    assert isinstance(remote.storage, FsspecStorage) and remote.path == url and remote.location == url
    assert repr(remote) == f"Store({url!r})" and remote.name == url.rsplit("/", 1)[-1]

    assert_same_tables(remote.scalars(), local.scalars())
    assert_same_tables(remote.arrays(), local.arrays())
    for filters in ({"model": M70, "steps": [1, 2]}, {"analysis": "spectra", "layer": [None]}, {"component": "W_in"}):
        assert_same_tables(remote.scalars(**filters), local.scalars(**filters))
        assert_same_tables(remote.arrays(**filters), local.arrays(**filters))
    assert remote.results() == local.results() and len(local.results()) == 8
    assert remote.models() == local.models() == [M70, MINI]
    assert remote.analyses(M70) == local.analyses(M70) and remote.steps(M70, "spectra") == [0, 1, 2]
    assert remote.source_meta(M70) == local.source_meta(M70) == {"steps": [0, 1, 2], "eval": {"ids": [1, 2, 3]}}
    assert remote.source_meta(MINI) is None
    drop_time = lambda df: df.drop(columns="time")  # noqa: E731
    assert_same_tables(drop_time(remote.failures()), drop_time(local.failures()))
    assert_same_tables(remote.coverage(), local.coverage())
    assert remote.completed(M70) == local.completed(M70)
    np.testing.assert_array_equal(remote.array(M70, 2, "spectra", "W_Q", "pattern", layer=0, head=2), np.arange(6.0).reshape(2, 3))
    assert remote.verify() == [] and remote.has_result(M70, 1, "spectra") and not remote.has_result(M70, 9, "spectra")

    # Several stores at once, and SQL through the same filesystem.
    assert_same_tables(read_scalars([url, local.path], analysis="weight_norms"),
                       read_scalars([local.path, local.path], analysis="weight_norms"))  # fmt: skip
    assert_same_tables(read_arrays(url), read_arrays(local.path))
    sql = "SELECT model, step, analysis, stat, sum(value) AS total, count(*) AS n FROM scalars GROUP BY ALL ORDER BY ALL"
    pd.testing.assert_frame_equal(remote.sql(sql), local.sql(sql))
    arrays_sql = "SELECT step, name, len(values) AS n FROM arrays ORDER BY ALL"
    pd.testing.assert_frame_equal(remote.sql(arrays_sql), local.sql(arrays_sql))

    # A result copied either way is the same files, bit for bit.
    other = Store.create(tmp_path / "adopted")
    other.adopt(remote, M70, 1, "spectra")
    again = Store.create(f"{url}-adopted")
    again.adopt(local, M70, 1, "spectra")
    key = remote._scalars_key(M70, 1, "spectra")
    assert other.storage.read_bytes(key) == remote.storage.read_bytes(key) == again.storage.read_bytes(key)
    assert again.storage.read_bytes(remote._arrays_key(M70, 1, "spectra")) == local.storage.read_bytes(
        remote._arrays_key(M70, 1, "spectra")
    )

    # Publishing: the dataset folder made from the URL is the one made from the folder.
    from_url, from_folder = dataset_folder(remote, tmp_path / "ds-url"), dataset_folder(local, tmp_path / "ds-local")
    files = sorted(p.relative_to(from_folder).as_posix() for p in from_folder.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(from_url).as_posix() for p in from_url.rglob("*") if p.is_file())
    assert "README.md" in files and len(files) == len(local.storage.files()) + 1
    assert all((from_url / f).read_bytes() == (from_folder / f).read_bytes() for f in files if f.endswith(".parquet"))
    assert (from_url / "README.md").read_text() == (from_folder / "README.md").read_text()


def test_a_rewrite_replaces_and_a_later_success_clears_the_failure(url):
    store = Store.create(url)
    store.write_result(M70, 1, "spectra", scalars_frame(1), arrays_rows(1))
    store.write_failure(M70, 1, "eval_loss", "boom")
    store.write_result(M70, 1, "spectra", scalars_frame(7))  # no arrays now: the stale arrays object goes
    store.write_result(M70, 1, "eval_loss", scalars_frame(1, 0))
    assert store.arrays().empty and store.failures().empty
    assert store.scalars(analysis="spectra", component="W_in")["value"].tolist() == [8.0, 8.5]  # step 7's values
    assert sorted(store.storage.files()) == sorted(
        ["store.json", store._scalars_key(M70, 1, "spectra"), store._scalars_key(M70, 1, "eval_loss")]
    )


def test_opening_a_url_that_holds_no_store_says_so(url):
    with pytest.raises(StoreError, match="not a pythia_dynamics store"):
        Store(url)
    assert Store(url, create=True).info["schema_version"] == store_module.SCHEMA_VERSION


def test_storage_options_reach_the_filesystem(s3_endpoint, monkeypatch):
    # Without the environment, only the options can say where the server is and who we are.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    store = Store.create(f"s3://{BUCKET}/with-options", storage_options=options)
    store.write_result(M70, 3, "weight_norms", scalars_frame(3))
    assert Store(f"s3://{BUCKET}/with-options", storage_options=options).steps(M70) == [3]


def test_local_paths_and_file_urls_stay_local(tmp_path):
    store = Store.create(tmp_path / "s")
    assert isinstance(store.storage, LocalStorage) and store.path == tmp_path / "s" and store.name == "s"
    store.write_result(M70, 1, "a", scalars_frame(1))
    by_url = Store(f"file://{tmp_path / 's'}")
    assert isinstance(by_url.storage, LocalStorage) and by_url.path == tmp_path / "s"
    assert by_url.completed(M70) == {(1, "a")}
    with pytest.raises(ValueError, match="storage_options apply to URL stores"):
        Store(tmp_path / "s", storage_options={"key": "x"})


@pytest.mark.parametrize("fails_in", ["arrays file", "scalars file", "scalars upload"])
def test_an_interrupted_write_leaves_no_result_that_reads_as_complete(url, monkeypatch, fails_in):
    store = Store.create(url)
    store.write_result(M70, 1, "spectra", scalars_frame(1), arrays_rows(1))
    store.write_result(M70, 2, "spectra", scalars_frame(2), arrays_rows(2))  # the result being rewritten
    write_table = store_module.pq.write_table
    calls = []

    def dies_half_way(table, f, **kwargs):
        calls.append(table)
        if fails_in == "arrays file" or len(calls) == 2:  # the arrays file is written first, the scalars last
            f.write(b"PAR1 half a file")
            raise OSError("connection reset")
        write_table(table, f, **kwargs)

    if fails_in == "scalars upload":  # the whole file is ready, the PUT fails
        pipe_file = store.storage.fs.pipe_file

        def upload_fails(path, data, **kwargs):
            if path.endswith("step2.scalars.parquet"):
                raise OSError("connection reset")
            return pipe_file(path, data, **kwargs)

        monkeypatch.setattr(store.storage.fs, "pipe_file", upload_fails)
    else:
        monkeypatch.setattr(store_module.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="connection reset"):
        store.write_result(M70, 2, "spectra", scalars_frame(5), arrays_rows(5))
    monkeypatch.undo()

    reopened = Store(url)
    assert reopened.completed(M70) == {(1, "spectra")}
    assert set(reopened.scalars()["step"]) == {1} and set(reopened.arrays()["step"]) == {1}
    assert reopened.verify() == []
    # No object holds part of a file: whatever is there under a final name reads back whole.
    for key in reopened.storage.files():
        if key.endswith(".parquet"):
            store_module._load(reopened.storage, key, store_module.ARRAYS_SCHEMA if "arrays" in key else store_module.SCALARS_SCHEMA)
    assert reopened.coverage().empty  # step 2 is simply not there, so the next sweep computes it


def test_verify_finds_planted_damaged_objects(s3_endpoint, capsys):
    url = f"s3://{BUCKET}/damaged-{uuid.uuid4().hex[:6]}"
    store = Store.create(url)
    for step in (0, 1, 2, 3):
        store.write_result(M70, step, "spectra", scalars_frame(step), arrays_rows(step))
    fs = store.storage.fs
    truncated = store.storage.full(store._scalars_key(M70, 1, "spectra"))
    fs.pipe_file(truncated, fs.cat_file(truncated)[:-40])  # a cut-short copy
    fs.rm_file(store.storage.full(store._arrays_key(M70, 2, "spectra")))  # an arrays object lost
    corrupt = store.storage.full(store._arrays_key(M70, 3, "spectra"))
    data = bytearray(fs.cat_file(corrupt))
    data[8:40] = b"\xff" * 32  # damage inside the file: the footer still reads
    fs.pipe_file(corrupt, bytes(data))

    assert store.completed(M70) == {(0, "spectra"), (3, "spectra")}  # footers only: step 3 looks fine
    problems = store.verify()
    assert sorted((p.kind, p.steps) for p in problems) == [("damaged", (1,)), ("damaged", (2,)), ("damaged", (3,))]
    assert "missing" in next(p.detail for p in problems if p.steps == (2,))

    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{url}: 4 results") and "step 1: damaged" in out
    assert main(["verify", url, "--repair"]) == 0
    assert Store(url).verify() == [] and Store(url).steps(M70) == [0]


@pytest.mark.slow
def test_a_sweep_into_s3_gives_the_local_sweeps_results_and_report(tiny_suite, s3_endpoint, tmp_path, capsys):
    from pythia_dynamics.sweeps import sweep

    analyses = "weight_norms,eval_loss,spectra"
    url = f"s3://{BUCKET}/sweep-{uuid.uuid4().hex[:6]}"
    local = sweep(tiny_suite, tmp_path / "local", analyses=analyses, progress=False)  # with the audit's rows
    assert main(["sweep", str(tiny_suite), "--out", url, "--analyses", analyses]) == 0
    remote_store, local_store = Store(url), Store(tmp_path / "local")
    assert local.done and remote_store.steps(local.model) == local_store.steps(local.model) == sorted(local.done)
    # Content hashes and versions as well as the numbers: the same results, wherever they were written.
    assert remote_store.results() == local_store.results()
    assert_same_tables(remote_store.scalars(), local_store.scalars())
    assert_same_tables(remote_store.arrays(), local_store.arrays())
    assert "audit" in remote_store.analyses()
    again = sweep(tiny_suite, url, analyses=analyses, progress=False, audit=False)  # resumes: nothing to do
    assert again.done == [] and sorted(again.skipped) == sorted(local.done) and again.store == url

    capsys.readouterr()
    report = tmp_path / "report.html"
    assert main(["report", url, "--out", str(report)]) == 0
    page = report.read_text()
    assert url in page and 'id="section-weight_norms"' in page and 'id="section-spectra"' in page
    assert main(["verify", url]) == 0 and "no problems found" in capsys.readouterr().out
    assert main(["events", url]) == 0 and local.model in capsys.readouterr().out


def test_local_stores_need_no_s3fs_and_a_url_says_what_to_install(tmp_path):
    code = f"""
import sys
sys.modules["s3fs"] = None  # as if it were not installed
import pandas as pd
from pythia_dynamics.store import Store
store = Store.create({str(tmp_path / 'plain')!r})
store.write_result("m", 1, "a", pd.DataFrame({{"component": ["x"], "layer": [0], "head": [None], "stat": ["s"], "value": [1.0]}}))
assert store.completed("m") == {{(1, "a")}}
assert "fsspec" not in sys.modules  # local stores never import it
try:
    Store("s3://bucket/store")
except ImportError as e:
    print("IMPORT ERROR:", e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "IMPORT ERROR:" in done.stdout and "pythia-dynamics[cloud]" in done.stdout


def test_key_layout_is_the_local_layout(url, tmp_path):
    local, remote = Store.create(tmp_path / "l"), Store.create(url)
    fill(local)
    fill(remote)
    assert remote.storage.files() == local.storage.files()
    assert f"results/{model_slug(M70)}/spectra/step1.arrays.parquet" in remote.storage.files()
