import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pythia_dynamics.catalog import UnknownModelError
from pythia_dynamics.schedule import StepSelectionError
from pythia_dynamics.sources import (
    CheckpointUnavailableError,
    HubSource,
    LocalSuite,
    open_source,
    write_hub_cache,
)
from pythia_dynamics.sources.base import UnsupportedCheckpointError
from pythia_dynamics.synthetic import tiny_config, write_random_suite


def test_local_suite_reads_steps_config_and_weights(random_suite):
    suite = LocalSuite(random_suite)
    assert suite.steps == [0, 1, 2, 4, 8]
    assert suite.name == "random-tiny"
    assert suite.hf_config().hidden_size == 32
    stored = load_file(random_suite / "step4" / "model.safetensors")
    read = suite.read_state_dict(4)
    assert read.keys() == stored.keys()
    assert all(torch.equal(read[k], stored[k]) for k in stored)


def test_open_source_dispatches(random_suite):
    assert isinstance(open_source(random_suite), LocalSuite)
    assert isinstance(open_source("pythia-70m"), HubSource)
    assert isinstance(open_source("olmo-1b"), HubSource) and isinstance(open_source("hub:LLM360/Amber"), HubSource)
    with pytest.raises(UnknownModelError, match=r"not an existing folder .*a known model \(Pythia, OLMo.*hub:ORG/NAME"):
        open_source("/no/such/suite")
    with pytest.raises(ValueError, match="revision_pattern apply to Hub models only"):
        open_source(random_suite, revision_pattern="ckpt_{step}")


def test_local_suite_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*step<N>"):
        LocalSuite(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no step<N> \(or other checkpoint\) folders"):
        LocalSuite(tmp_path / "empty")


def test_missing_and_corrupt_checkpoints_are_reported(random_suite, tmp_path):
    root = shutil.copytree(random_suite, tmp_path / "damaged")
    shutil.rmtree(root / "step2")  # listed in suite.json, gone from disk
    (root / "step4" / "model.safetensors").write_bytes(b"\x00" * 64)
    suite = LocalSuite(root)
    assert 2 in suite.steps
    with pytest.raises(CheckpointUnavailableError, match="step 2"):
        suite.read_state_dict(2)
    with pytest.raises(CheckpointUnavailableError, match="cannot read weights from .*step4"):
        suite.read_state_dict(4)
    assert suite.read_state_dict(8)  # the rest still reads


@pytest.fixture(scope="module")
def hub_cache(random_suite, tmp_path_factory):
    """pythia-70m as the Hub cache lays it out, offline, with tiny weights at steps 0, 1, 2, 4."""
    cache = tmp_path_factory.mktemp("hf-cache")
    write_hub_cache(cache, "EleutherAI/pythia-70m", {f"step{s}": random_suite / f"step{s}" for s in (0, 1, 2, 4)})
    return cache


def test_hub_source_resolves_revisions_offline(hub_cache, random_suite):
    source = HubSource("pythia-70m", cache_dir=hub_cache)
    assert source.name == "EleutherAI/pythia-70m" and len(source.steps) == 154
    expected = LocalSuite(random_suite).read_state_dict(2)
    read = source.read_state_dict(2)
    assert all(torch.equal(read[k], expected[k]) for k in expected)
    assert not torch.equal(read["gpt_neox.embed_in.weight"], source.read_state_dict(4)["gpt_neox.embed_in.weight"])


def test_hub_source_errors_name_the_problem(hub_cache):
    source = HubSource("EleutherAI/pythia-70m", cache_dir=hub_cache)
    with pytest.raises(StepSelectionError, match="1500 not in this schedule"):
        source.read_state_dict(1500)
    with pytest.raises(CheckpointUnavailableError, match="revision step2000.*HF_HUB_OFFLINE"):
        source.read_state_dict(2000)
    with pytest.raises(ValueError, match="cache_policy must be one of"):
        HubSource("pythia-70m", cache_policy="forever")


def test_hub_source_reads_pickled_checkpoints_safely(random_suite, tmp_path):
    # Older Pythia revisions ship pytorch_model.bin only; it must load with weights_only=True.
    folder = tmp_path / "bin-only"
    shutil.copytree(random_suite / "step8", folder)
    state_dict = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state_dict, folder / "pytorch_model.bin")
    write_hub_cache(tmp_path / "cache", "EleutherAI/pythia-160m", {"step1000": folder})
    read = HubSource("pythia-160m", cache_dir=tmp_path / "cache").read_state_dict(1000)
    assert all(torch.equal(read[k], state_dict[k]) for k in state_dict)


def test_hub_source_reads_sharded_checkpoints(sharded_checkpoint, tmp_path):
    folder, state_dict = sharded_checkpoint
    write_hub_cache(tmp_path / "cache", "EleutherAI/pythia-410m", {"step0": folder})
    read = HubSource("pythia-410m", cache_dir=tmp_path / "cache").read_state_dict(0)
    assert read.keys() == state_dict.keys()


def test_delete_after_use_frees_only_that_revision(random_suite, tmp_path):
    cache = tmp_path / "cache"
    write_hub_cache(cache, "EleutherAI/pythia-70m", {f"step{s}": random_suite / f"step{s}" for s in (0, 1, 2)})
    repo = cache / "models--EleutherAI--pythia-70m"
    source = HubSource("pythia-70m", cache_dir=cache, cache_policy="delete-after-use")
    source.read_state_dict(2)
    source.release(2)
    assert not (repo / "refs" / "step2").exists()
    # step1 shares its weight blob with step0 (identical weights): releasing step1 must keep step0 readable.
    source.read_state_dict(1)
    source.release(1)
    assert source.read_state_dict(0)
    with pytest.raises(CheckpointUnavailableError):
        source.read_state_dict(2)


def test_keep_policy_keeps_the_cache(hub_cache):
    source = HubSource("pythia-70m", cache_dir=hub_cache)
    source.read_state_dict(4)
    source.release(4)
    assert (hub_cache / "models--EleutherAI--pythia-70m" / "refs" / "step4").exists()


def test_synthetic_suites_are_reproducible(tmp_path):
    a = write_random_suite(tmp_path / "a", tiny_config(), [0, 3])
    b = write_random_suite(tmp_path / "b", tiny_config(), [0, 3])
    assert (a / "step3" / "model.safetensors").read_bytes() == (b / "step3" / "model.safetensors").read_bytes()


def test_broken_or_missing_configs_are_refused_naming_the_file(random_suite, tmp_path):
    root = shutil.copytree(random_suite, tmp_path / "broken")
    config = (root / "step4" / "config.json").read_text()
    (root / "step4" / "config.json").write_text(config[: len(config) // 2])
    (root / "step8" / "config.json").unlink()
    suite = LocalSuite(root)
    suite.preflight([0, 2])  # only the selected steps are checked
    with pytest.raises(UnsupportedCheckpointError, match=r"step4/config.json is not valid JSON \(.*line \d+"):
        suite.preflight([2, 4])
    with pytest.raises(UnsupportedCheckpointError, match=r"step8/config.json is missing \(the folder holds .*model.safetensors\)"):
        suite.preflight([8])
    (root / "step2" / "config.json").write_text("[1, 2]")
    with pytest.raises(UnsupportedCheckpointError, match="step2/config.json holds a JSON list, not an object"):
        suite.preflight([2])


def test_a_missing_step_folder_is_left_to_fail_alone_unless_all_are(random_suite, tmp_path):
    root = shutil.copytree(random_suite, tmp_path / "gappy")
    shutil.rmtree(root / "step2")
    shutil.rmtree(root / "step4")  # both listed in suite.json
    suite = LocalSuite(root)
    suite.preflight([0, 2, 4])  # a sweep records steps 2 and 4 as failed and goes on with step 0
    with pytest.raises(CheckpointUnavailableError, match="none of the 2 selected checkpoints .* is on disk: no folder step2, step4"):
        suite.preflight([2, 4])
    with pytest.raises(StepSelectionError, match="3 not in this schedule"):
        suite.preflight([3])


def test_a_bad_suite_json_is_named(random_suite, tmp_path):
    root = shutil.copytree(random_suite, tmp_path / "bad-meta")
    (root / "suite.json").write_text('{"name": ')
    with pytest.raises(ValueError, match=r"suite.json is not valid JSON .*fix or remove it"):
        LocalSuite(root)


# Listing steps must not import the packages that make start-up slow (`pythia-dynamics steps` relies on it).
LIST_STEPS = """
import json, sys
import pythia_dynamics.sources
from pythia_dynamics.sources import LocalSuite, open_source
steps = [len(open_source("pythia-70m").steps), len(LocalSuite(sys.argv[1]).steps)]
heavy = ("torch", "transformers", "transformer_lens", "safetensors", "huggingface_hub")
print(json.dumps({"steps": steps, "imported": [name for name in heavy if name in sys.modules]}))
"""


def test_listing_steps_imports_no_torch_transformers_or_hub(random_suite):
    done = subprocess.run([sys.executable, "-c", LIST_STEPS, str(random_suite)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"steps": [154, 5], "imported": []}


LIST_SUITE_STEPS = """
import json, sys
from pythia_dynamics.sources import open_source
source = open_source("olmo-1b", cache_dir=sys.argv[1])
heavy = ("torch", "transformers", "transformer_lens", "safetensors")
print(json.dumps({"steps": source.steps, "imported": [name for name in heavy if name in sys.modules]}))
"""


def test_listing_a_suites_branches_imports_no_torch_or_transformers(random_suite, tmp_path):
    write_hub_cache(tmp_path, "allenai/OLMo-1B-hf", {"step0-tokens0B": random_suite / "step0",
                                                    "step1000-tokens4B": random_suite / "step2"})
    done = subprocess.run([sys.executable, "-c", LIST_SUITE_STEPS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"steps": [0, 1000], "imported": []}
