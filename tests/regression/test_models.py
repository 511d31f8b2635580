"""Regression models: shapes with every attention type, padding and pooling honour masks, tabular tokens."""

import pytest
import torch

from regression.h_transformer import SequenceRegressor, TabularRegressor
from transformer.config import ModelConfig


def enc(pooling="mean", attention_type="mha", positional="rope", position="none"):
    attention = {"type": attention_type, "positional": positional}
    if attention_type == "gqa":
        attention["num_kv_heads"] = 2
    return ModelConfig(kind="encoder", vocab_size=1, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=32,
                       pooling=pooling, position=position, attention=attention)


@pytest.mark.parametrize("attention_type", ["mha", "mqa", "gqa", "mla"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_sequence_regressor_shapes(attention_type, pooling):
    model = SequenceRegressor(enc(pooling, attention_type), num_features=5, num_targets=2, horizon_steps=3, cardinalities=[4, 7])
    out = model(torch.randn(6, 12, 5), torch.randint(0, 4, (6, 12, 2)))
    assert out.shape == (6, 2 * 3)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
@pytest.mark.parametrize("positional,position", [("rope", "none"), ("alibi", "none"), ("none", "learned"), ("none", "sinusoidal")])
def test_padding_changes_nothing_and_pooling_honours_the_mask(pooling, positional, position):
    model = SequenceRegressor(enc(pooling, positional=positional, position=position), num_features=3, num_targets=1).eval()
    real = torch.randn(1, 7, 3)
    padded = torch.cat([real, torch.randn(1, 4, 3) * 50], dim=1)  # right padding with garbage
    mask = torch.tensor([[1] * 7 + [0] * 4])
    torch.testing.assert_close(model(padded, padding_mask=mask), model(real), atol=1e-5, rtol=1e-4)


def test_tabular_regressor_tokens_and_set_semantics():
    cfg = enc("cls", positional="none")
    model = TabularRegressor(cfg, num_features=4, num_targets=2, cardinalities=[3, 5]).eval()
    x, cats = torch.randn(8, 4), torch.randint(0, 3, (8, 2))
    assert model(x, cats).shape == (8, 2)
    with pytest.raises(ValueError, match="features are a set"):
        TabularRegressor(enc("cls", positional="rope"), num_features=4, num_targets=1)
