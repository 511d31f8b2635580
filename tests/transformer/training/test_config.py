"""Config loading: every shipped config validates; overrides, interpolation and errors with key paths."""

from pathlib import Path

import pytest

from transformer.cli import load_any_config, main
from transformer.training.config import ConfigError, RunConfig, flat_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[3].joinpath("configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "shakespeare_char.yaml", "shakespeare_bpe.yaml", "hf_dataset.yaml", "gqa.yaml", "mla.yaml",
            "multi_gpu_bf16_ddp.yaml", "multi_gpu_bf16_fsdp.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_names_its_command(path):
    if "eval" in path.parts:  # an lm-eval task over a local file: lm-eval builds it, with every document
        pytest.importorskip("lm_eval")
        import os

        from lm_eval.tasks import TaskManager

        from transformer.evaluation.runner import check_data_files

        manager = TaskManager(include_path=str(path.parent), include_defaults=False)
        name = path.stem
        cwd = os.getcwd()
        os.chdir(path.parents[2])  # data_files are relative to the repository root, where the command runs
        try:
            check_data_files(manager, name)
            task = manager.load([name])["tasks"][name]
            assert len(list(task.test_docs())) > 0
        finally:
            os.chdir(cwd)
    elif "sweeps" in path.parts:  # a sweep file: every run it describes must validate
        from transformer.sweep import plan_from_yaml

        plan = plan_from_yaml(path)
        for settings in plan.runs:
            load_any_config(plan.base_config, plan.overrides + [f"{k}={v}" for k, v in settings.items()])
    else:  # with the key=value arguments of its own command line (fine-tuning configs need init_from, data.path)
        command = path.read_text().splitlines()[0].split()
        cfg = load_any_config(str(path), [arg for arg in command if "=" in arg and not arg.startswith("-")])
        if isinstance(cfg, RunConfig):
            assert cfg.init_from or cfg.data.block_size <= cfg.model.max_seq_len  # init_from: the checkpoint's model
        else:
            assert cfg.task == "regression"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python "), f"{path} must open with the command that runs it"


def test_default_config_file_equals_embedded_default():
    assert load_config(Path(CONFIGS[0]).parent / "default.yaml") == load_config(None)


def test_overrides_and_interpolation():
    cfg = load_config(CONFIGS[0].parent / "lm" / "shakespeare_char.yaml",
                      ["model.max_seq_len=96", "model.attention.type=gqa", "model.attention.num_kv_heads=2", "trainer.max_steps=7"])
    assert (cfg.model.attention.type, cfg.model.attention.num_kv_heads, cfg.trainer.max_steps) == ("gqa", 2, 7)
    assert cfg.data.block_size == 96  # ${model.max_seq_len}
    flat = flat_dict(cfg)
    assert flat["model.attention.type"] == "gqa" and flat["model.attention.num_kv_heads"] == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.attention.num_kv_head=2"], r"model\.attention\.num_kv_head.*did you mean.*num_kv_heads"),
        (["trainer.max_step=3"], r"trainer\.max_step.*did you mean.*max_steps"),
        (["trainer.max_steps=abc"], r"config key trainer\.max_steps: Value 'abc'"),
        (["model.attention.type=gqa", "model.attention.num_kv_heads=3"], r"num_heads=4 is not divisible by num_kv_heads=3"),
        (["data.source=files"], r"data\.path is required"),
        (["trainer.precision=bf16"], r"trainer\.precision='bf16'.*did you mean 'bf16-true'"),
        (["data.block_size=4096"], r"data\.block_size=4096 exceeds model\.max_seq_len=128"),
        (["trainer.max_steps"], r"key\.sub=value"),
        (["optim.fused=true", "trainer.precision=bf16-mixed"], r"optim\.fused=true cannot be combined with optim\.grad_clip=1\.0"),
        (["trainer.strategy=fsdp2_tp"], r"trainer\.strategy=fsdp2_tp needs trainer\.tensor_parallel_size"),
        (["trainer.tensor_parallel_size=2"], r"trainer\.tensor_parallel_size=2 needs trainer\.strategy=tp or fsdp2_tp"),
        (["trainer.context_parallel_size=2", "trainer.strategy=ddp"], r"context_parallel_size=2 needs trainer\.strategy=fsdp2"),
        (["trainer.context_parallel_size=0", "trainer.strategy=fsdp2"], r"trainer\.context_parallel_size"),
        (["checkpoint.sharded=true"], r"checkpoint\.sharded=true needs trainer\.strategy=fsdp2 \| tp \| fsdp2_tp"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.strategy=tp", "trainer.tensor_parallel_size=2", "trainer.devices=4"],
     r"tensor_parallel_size=2 must equal the number of processes \(4.*use trainer\.strategy=fsdp2_tp"),
    (["trainer.strategy=fsdp2_tp", "trainer.tensor_parallel_size=3", "trainer.devices=4"],
     r"tensor_parallel_size=3 must divide the number of processes \(4"),
    (["trainer.strategy=fsdp2_tp", "trainer.tensor_parallel_size=2", "trainer.context_parallel_size=4", "trainer.devices=4"],
     r"context_parallel_size=4 x trainer\.tensor_parallel_size=2 must divide the number of processes \(4"),
])
def test_parallel_sizes_that_do_not_fit_the_processes_name_both(overrides, message):
    from transformer.training.trainer import build_strategy

    with pytest.raises(ValueError, match=message):
        build_strategy(load_config(None, ["trainer.accelerator=cpu", *overrides]))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_cli_print_config_and_errors(capsys):
    assert main(["--print-config", "trainer.max_steps=3", "model.attention.type=mqa"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 3" in out and "type: mqa" in out
    assert main(["model.embed_dims=3"]) == 2
    err = capsys.readouterr().err
    assert "model.embed_dims" in err and "embed_dim" in err


def test_fused_adamw_default_follows_device_and_precision():
    import torch

    from transformer.training.optim import build_optimizer

    cfg = load_config(None, ["optim.grad_clip=1.0"])
    model = torch.nn.Linear(4, 4)
    assert build_optimizer(model, cfg.optim).defaults["fused"]  # CPU tensors have the fused kernel
    # Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients: fall back, do not fail
    assert not build_optimizer(model, cfg.optim, "bf16-mixed").defaults["fused"]
    no_clip = load_config(None, ["optim.grad_clip=0", "optim.fused=true", "trainer.precision=bf16-mixed"])
    assert build_optimizer(model, no_clip.optim, "bf16-mixed").defaults["fused"]


def test_tf32_setting_follows_config(tmp_path):
    import torch

    from transformer.training.trainer import build_trainer

    before = torch.get_float32_matmul_precision()
    try:
        build_trainer(load_config(None, ["trainer.tf32=false", "trainer.progress_bar=false", "logger.csv=false"]), tmp_path)
        assert torch.get_float32_matmul_precision() == "highest"
        build_trainer(load_config(None, ["trainer.progress_bar=false", "logger.csv=false"]), tmp_path)
        assert torch.get_float32_matmul_precision() == "high"  # TF32 tensor cores on GPUs that have them
    finally:
        torch.set_float32_matmul_precision(before)


def test_string_override_keeps_the_text_and_errors_blame_the_override(tmp_path):
    assert load_config(None, ["sample.prompt=ROMEO:"]).sample.prompt == "ROMEO:"
    assert load_config(None, ["data.path=a:b", "data.source=files"]).data.path == "a:b"
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"model.attention.sliding_window.*from the override 'model.attention.sliding_window=w:'"):
        load_config(config, ["model.attention.sliding_window=w:"])
    config.write_text("trainer:\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML at line 3"):
        load_config(config)
