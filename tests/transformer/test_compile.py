"""torch.compile: the training forward (model + loss) traces as one graph, with no graph breaks."""

import pytest
import torch

from transformer.config import ModelConfig
from transformer.transformer_model import build_model


@pytest.mark.parametrize("attention", [
    {"type": "gqa", "num_kv_heads": 2, "positional": "rope"},
    {"type": "mla", "positional": "rope"},
    {"type": "mha", "positional": "alibi", "sliding_window": 16},
    {"type": "mqa", "positional": "relative"},
])
def test_training_forward_has_no_graph_breaks(attention):
    import torch._dynamo as dynamo

    cfg = ModelConfig(vocab_size=65, embed_dim=64, num_heads=4, num_layers=2, max_seq_len=32, norm="rmsnorm",
                      mlp="swiglu", attention=attention)
    model = build_model(cfg)
    x = torch.randint(0, 65, (4, 32))
    dynamo.reset()
    explanation = dynamo.explain(lambda a, b: model(a, b).loss)(x, x)
    assert explanation.graph_break_count == 0, [b.reason.splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_training_run(tmp_path):
    from transformer.cli import run
    from transformer.training.config import load_config

    from .training.conftest import PATTERN, tiny_overrides

    corpus = tmp_path / "toy.txt"
    corpus.write_text(PATTERN * 120)
    result = run(load_config(None, tiny_overrides(corpus, tmp_path, **{"trainer.compile": "true", "trainer.max_steps": 10,
                                                                        "trainer.val_check_interval": 5})))
    assert result.steps == 10 and result.val_loss < 4
