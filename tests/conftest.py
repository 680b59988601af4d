"""Shared fixtures. The whole suite runs offline: the Hub is only ever read through a local cache."""

import os

# Before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from pythia_dynamics import compat  # noqa: E402

BACKENDS = compat.available_backends()

# In CI (the CI environment variable is set) everything the README promises must really run: a test
# skipped because a tool it needs is missing (a browser, the notebook runner, a peer package) fails
# there instead. Such skips say so with this prefix; GPU tests and tests of a TransformerLens backend
# the installed version lacks skip everywhere.
REQUIRED_TOOL = "required tool missing:"


def _fail_in_ci(report) -> None:
    if os.environ.get("CI") and report.skipped and REQUIRED_TOOL in str(report.longrepr):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{reason} (CI must run this test, so a missing tool fails it there)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each test taking `backend` runs once per TransformerLens backend installed."""
    return request.param


@pytest.fixture(scope="session")
def random_suite(tmp_path_factory):
    """A local suite of a tiny random GPT-NeoX: steps 0, 1, 2, 4, 8 with step1 a copy of step0, as in Pythia."""
    from pythia_dynamics.synthetic import tiny_config, write_random_suite

    return write_random_suite(
        tmp_path_factory.mktemp("suites") / "random-tiny", tiny_config(), [0, 1, 2, 4, 8], identical=[(1, 0)]
    )


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    """A trained mini suite (tiny config, a few seconds): real tokenizer, held-out text, suite.json."""
    from pythia_dynamics.train import tiny_test_config, train_suite

    return train_suite(tiny_test_config(), tmp_path_factory.mktemp("trained") / "tiny-test", progress=False)


@pytest.fixture
def sharded_checkpoint(random_suite, tmp_path):
    """A copy of random_suite's step8 saved as two safetensors shards and an index, as large Hub models are."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(random_suite / "step8", tmp_path / "sharded")
    state_dict = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state_dict)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state_dict[k].contiguous() for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder, state_dict


@pytest.fixture
def render_in_chromium():
    """render(page_html, tmp_path) -> (DOM after scripts ran, console lines), in headless Chromium offline."""
    import shutil
    import subprocess

    if shutil.which("chromium") is None:
        pytest.skip(f"{REQUIRED_TOOL} a chromium binary (Debian's chromium package)")

    def render_in_chromium(page: str, tmp_path, window_size: str | None = None) -> tuple[str, list[str]]:
        """The DOM after scripts ran, and the console messages, from a headless Chromium with no network;
        `window_size` "W,H" in pixels (Chromium's default otherwise)."""
        path = tmp_path / "page.html"
        path.write_text(page, encoding="utf-8")
        command = [
            shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", *([f"--window-size={window_size}"] if window_size else []), "--dump-dom", path.as_uri(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        return done.stdout, console

    return render_in_chromium
