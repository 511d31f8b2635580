PATTERN = "the quick brown fox jumps over the lazy dog. " * 3 + "\n"
"""The toy corpus's line (the ``toy_corpus`` fixture, tests/transformer/conftest.py, writes it 120 times)."""


def tiny_overrides(corpus, out_dir, **extra):
    """Overrides for a run that takes a few seconds on a CPU."""
    values = {
        "out_dir": str(out_dir), "data.source": "files", "data.path": str(corpus), "data.max_chars": "null",
        "data.batch_size": 8, "model.embed_dim": 32, "model.num_heads": 4, "model.num_layers": 2, "model.max_seq_len": 32,
        "data.block_size": 32, "trainer.max_steps": 40, "trainer.val_check_interval": 20, "trainer.limit_val_batches": 4,
        "trainer.log_every_n_steps": 5, "trainer.progress_bar": "false", "optim.warmup_steps": 5, "optim.lr": 3e-3,
        "sample.max_new_tokens": 20,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
