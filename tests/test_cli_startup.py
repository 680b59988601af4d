"""Commands that build no model answer without importing torch, TransformerLens or transformers.

Not timed (start-up times are measured by benchmarks/bench.py's startup part): each command runs in a
fresh interpreter, which then reports which heavy packages ended up in `sys.modules`.
"""

import json
import subprocess
import sys

import pytest

from pythia_dynamics.analyses import AnalysisInfo, analysis_infos, register, registered_analyses
from pythia_dynamics.analyses.registry import _REGISTRY
from pythia_dynamics.cli import _analysis_line, main

HEAVY = ("torch", "transformer_lens", "transformers")

# Runs main(argv) in a fresh interpreter; prints its exit code, output and the heavy modules it imported.
RUN_MAIN = f"""
import contextlib, io, json, sys
from pythia_dynamics.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}}))
"""


def fresh(script: str, *argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["analyses"], 0),
        (["models"], 0),
        (["steps", "pythia-70m"], 0),
        (["steps", "pythia-71m"], 2),  # unknown model: suggestions, no model built
        (["sweep", "pythia-70m"], 2),  # argparse: --out is required
        (["sweep", "pythia-70m", "--out", "store", "--backend", "jax"], 2),  # argparse: a bad choice
        (["train-suite", "suite", "--use-parallel-residual", "maybe"], 2),  # argparse: not a boolean
        (["no-such-command"], 2),
        (["sweep", "pythia-71m", "--out", "store"], 2),  # an unknown source, refused before any model work
        (["verify", "no-such-store"], 2),
    ],
)
def test_commands_that_build_no_model_import_no_torch(argv, code):
    result = fresh(RUN_MAIN, *argv)
    assert result["code"] == code, result["err"]
    assert result["heavy"] == []


def test_analyses_lists_what_the_registry_holds_once_everything_is_imported():
    result = fresh(RUN_MAIN, "analyses")
    assert result["heavy"] == []
    builtin = [a for a in registered_analyses().values() if a.fn.__module__.startswith("pythia_dynamics.analyses.")]
    assert len(builtin) >= 10
    assert result["out"].splitlines() == [_analysis_line(a) for a in builtin]


READ_THEN_IMPORT = f"""
import json, sys
from pythia_dynamics.analyses import analysis_infos, register, registered_analyses
read = [[i.name, i.needs, i.description, i.references] for i in analysis_infos()]
heavy = [name for name in {HEAVY!r} if name in sys.modules]
import pythia_dynamics.analyses.spectra  # imported first: the registry's order must not depend on it
try:
    register("weight_norms")(lambda model: None)
    refused = ""
except ValueError as error:
    refused = str(error)
imported = [[a.name, a.needs, a.description, a.references] for a in registered_analyses().values()]
print(json.dumps({{"read": read, "heavy": heavy, "refused": refused, "imported": imported}}))
"""


def test_reading_the_analysis_modules_gives_what_importing_them_registers():
    result = fresh(READ_THEN_IMPORT)
    assert result["heavy"] == []
    assert result["read"] == result["imported"]  # names, needs, descriptions, references, and their order
    assert any(references for *_, references in result["read"])  # weight_distances: the flag is read too
    # A built-in name is refused to user code even before the built-in modules were imported.
    assert "already registered" in result["refused"]


def test_an_analysis_registered_at_runtime_is_listed(capsys):
    @register("probe_listed", needs="weights")
    def probe_listed(model):
        """Counts nothing, for this test."""

    try:
        assert registered_analyses()["probe_listed"].fn is probe_listed
        assert AnalysisInfo("probe_listed", "weights", "Counts nothing, for this test.") in analysis_infos()
        assert main(["analyses"]) == 0
        assert "probe_listed" in capsys.readouterr().out
    finally:
        _REGISTRY.pop("probe_listed", None)


PACKAGE = f"""
import json, sys
import pythia_dynamics
version = pythia_dynamics.__version__
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"version": version, "heavy": heavy, "all": pythia_dynamics.__all__, "dir": dir(pythia_dynamics)}}))
"""


def test_the_package_imports_nothing_heavy_until_a_name_is_used():
    result = fresh(PACKAGE)
    assert result["heavy"] == [] and result["version"]
    assert set(result["all"]) <= set(result["dir"])


def test_every_exported_name_is_the_object_of_its_module():
    import pythia_dynamics
    from pythia_dynamics import loading, schedule, sources, store, sweeps, timeline

    homes = [loading, schedule, sources, store, sweeps, timeline]
    for name in pythia_dynamics.__all__:
        value = getattr(pythia_dynamics, name)
        assert any(getattr(module, name, None) is value for module in homes), name
    assert pythia_dynamics.sweep is sweeps.sweep and pythia_dynamics.Store is store.Store
    assert pythia_dynamics.load_checkpoint is loading.load_checkpoint
    with pytest.raises(AttributeError, match="no attribute 'sweeep'"):
        pythia_dynamics.sweeep  # noqa: B018


def test_a_sweep_of_uncached_hub_checkpoints_fails_before_importing_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = fresh(RUN_MAIN, "sweep", "pythia-70m", "--out", str(tmp_path / "store"), "--steps", "first:2")
    assert result["code"] == 2 and "EleutherAI/pythia-70m@step0, EleutherAI/pythia-70m@step1" in result["err"]
    assert result["heavy"] == [] and not (tmp_path / "store").exists()
