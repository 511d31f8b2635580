"""Each scale-out strategy for a few steps on CUDA devices (NCCL, bf16-mixed): ``pytest -m gpu``. Skipped without
enough GPUs; the CPU tests beside this file check the same strategies for equality with one process in fp32.
Here the bar is bf16's: the losses follow a single-device run of the same data within 0.05."""

import pytest
import torch

from .test_fsdp2_strategy import _common, _history, _train

pytestmark = pytest.mark.gpu

CASES = [  # (strategy, processes, extra overrides)
    ("fsdp2", 1, {}),
    ("fsdp2", 2, {}),
    ("tp", 2, {}),
    ("fsdp2", 2, {"trainer.context_parallel_size": 2}),
    ("fsdp2_tp", 4, {"trainer.tensor_parallel_size": 2}),
]


@pytest.mark.parametrize("strategy, devices, extra", CASES,
                         ids=[f"{s}-{n}{'-cp' if 'trainer.context_parallel_size' in e else ''}" for s, n, e in CASES])
def test_strategy_trains_on_cuda(tmp_path, toy_corpus, strategy, devices, extra):
    if torch.cuda.device_count() < devices:
        pytest.skip(f"needs {devices} CUDA devices")
    common = {"trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed", "model.attention.type": "gqa",
              "model.attention.num_kv_heads": 2, "trainer.log_every_n_steps": 1}
    # the reference sees the same global batch: the data-parallel width is devices / (tp x cp)
    split = extra.get("trainer.tensor_parallel_size", 1) * extra.get("trainer.context_parallel_size", 1)
    split = devices if strategy == "tp" else split
    batch = 4 * devices // split
    _train(_common(toy_corpus, tmp_path / "one", **{**common, "trainer.devices": 1, "name": "one",
                                                    "data.batch_size": batch}))
    _train(_common(toy_corpus, tmp_path / "run", **{**common, **extra, "trainer.strategy": strategy,
                                                    "trainer.devices": devices, "name": "run",
                                                    "sample.max_new_tokens": 6}), timeout=600)
    [one] = (tmp_path / "one").glob("one-*")
    [run] = (tmp_path / "run").glob("run-*")
    ref, got = _history(one)["train/loss"].dropna(), _history(run)["train/loss"].dropna()
    assert len(ref) == len(got) and ((ref.values - got.values) ** 2).max() ** 0.5 < 0.05
    assert (run / "checkpoints" / "last.ckpt").exists()
