"""The tutorial notebooks run top to bottom on a tiny trained suite, and are committed without outputs."""

import json
import os
from pathlib import Path

import pytest

# The notebook runner; without it the tutorials cannot run (which fails CI: see conftest.REQUIRED_TOOL).
nbformat = pytest.importorskip("nbformat", reason="required tool missing: nbformat (the test extra)")
nbclient = pytest.importorskip("nbclient", reason="required tool missing: nbclient (the test extra)")
pytest.importorskip("ipykernel", reason="required tool missing: ipykernel (the test extra)")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/pythia-dynamics/pythia-dynamics/blob/main/tutorials/"


def test_the_five_tutorials_exist():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quick_start", "02_distributions", "03_svd_directions", "04_your_own_suite", "05_circuits",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean_and_has_a_colab_badge(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs; regenerate it"
    assert f"{COLAB}{path.name}" in notebook.cells[0].source
    assert "google.colab" in notebook.cells[1].source and "%pip install" in notebook.cells[1].source


def test_generator_matches_committed_notebooks(tmp_path, monkeypatch):
    """The .ipynb files are what make_notebooks.py writes: nobody edited one by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for path in NOTEBOOKS:
        assert json.loads((tmp_path / path.name).read_text()) == json.loads(path.read_text()), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_suite, tmp_path, monkeypatch):
    # The kernel inherits this process's environment; python3 is ipykernel's spec for this interpreter.
    monkeypatch.setenv("PYTHIA_DYNAMICS_TUTORIAL_SOURCE", str(tiny_suite))
    monkeypatch.setenv("PYTHIA_DYNAMICS_TUTORIAL_STEPS", "first:2,last")
    monkeypatch.setenv("PYTHIA_DYNAMICS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHIA_DYNAMICS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Every figure cell rendered something (plotly figures and circuitsvis views are display data).
    assert any(o.output_type in ("execute_result", "display_data") for o in outputs)
    assert os.listdir(tmp_path)
