"""`--device cuda`: loading and every analysis on the GPU, with the CPU's numbers and flat GPU memory.

Skipped where torch sees no CUDA device (CI never has one); run on a GPU machine with
`python -m pytest tests/test_gpu.py`.
"""

import warnings

import pytest
import torch

from pythia_dynamics import sweep
from pythia_dynamics.analyses import registered_analyses
from pythia_dynamics.evalbatch import EvalBatch
from pythia_dynamics.loading import CheckpointLoader, IdenticalCheckpointWarning
from pythia_dynamics.store import Store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH = EvalBatch(torch.randint(0, 384, (4, 24), generator=torch.Generator().manual_seed(0)), {"kind": "test"})


def test_the_model_and_its_weights_are_on_the_gpu(random_suite, backend):
    model = CheckpointLoader(random_suite, backend=backend, device="cuda").load(2).model
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_a_cuda_sweep_gives_the_cpu_sweeps_numbers(random_suite, tmp_path):
    names = list(registered_analyses())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdenticalCheckpointWarning)
        for device in ("cpu", "cuda"):
            summary = sweep(random_suite, tmp_path / device, steps=[0, 2, 8], analyses=names, device=device,
                            eval_batch=BATCH, progress=False)  # fmt: skip
            assert not summary.failed, summary
    cpu = Store(tmp_path / "cpu").scalars().sort_values(["step", "analysis", "component", "layer", "head", "stat"])
    gpu = Store(tmp_path / "cuda").scalars().sort_values(["step", "analysis", "component", "layer", "head", "stat"])
    assert len(cpu) == len(gpu)
    # Fits stop at an optimiser tolerance and kernels sum in other orders: close, not bit-equal.
    torch.testing.assert_close(
        torch.tensor(gpu["value"].to_numpy()), torch.tensor(cpu["value"].to_numpy()), rtol=2e-3, atol=1e-5, equal_nan=True
    )


def test_gpu_memory_does_not_grow_from_checkpoint_to_checkpoint(random_suite, backend):
    # TransformerLens issue 290: models re-created per checkpoint leak GPU memory.
    loader = CheckpointLoader(random_suite, backend=backend, device="cuda")
    allocated = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdenticalCheckpointWarning)
        for step in [0, 2, 4, 8] * 3:
            loader.load(step)
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
    assert len(set(allocated[1:])) == 1, allocated
