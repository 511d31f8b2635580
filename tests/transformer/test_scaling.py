"""The scaling measurement (transformer.scaling): it measures the layer the model's stack builds, runs each case in
a fresh process, skips what cannot fit with a reason, and reports a child's error instead of hanging."""

import math
import queue

import torch

from transformer.config import ModelConfig
from transformer.layers import StackContext
from transformer.scaling import Case, _child, measure, scaling
from transformer.transformer_model import build_model

PATTERN = {"embed_dim": 32, "num_heads": 4, "num_layers": 4, "max_seq_len": 32, "vocab_size": 40,
           "attention": {"type": "mha", "positional": "rope"}, "attention_pattern": ["local", "local", "global"],
           "attention_variants": {"local": {"sliding_window": 8}, "global": {"type": "differential"}},
           "attention_layers": {-1: {"type": "gqa", "num_kv_heads": 2}}}


def test_a_case_is_the_layer_the_stack_builds_at_that_depth():
    model = build_model(ModelConfig.from_dict(PATTERN))
    x = torch.randn(2, 24, 32)
    for index, block in enumerate(model.decoder.blocks):
        cfg, layer = Case(PATTERN, index).build()
        assert type(layer) is type(block.attn) and layer.extra_repr() == block.attn.extra_repr()
        layer.load_state_dict(block.attn.state_dict())
        ctx = StackContext(24, True, x.device)  # what the stack hands this block in a training forward
        expected = block.attn(x, attention_mask=ctx.mask_for(block.attn.sliding_window, 24), rope=ctx.rope_for(block.attn.rotary))
        ctx = StackContext(24, True, x.device)
        got = layer(x, attention_mask=ctx.mask_for(layer.sliding_window, 24), rope=ctx.rope_for(layer.rotary))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [type(Case(PATTERN, i).build()[1]).__name__ for i in range(4)] == [
        "MultiHeadAttention", "MultiHeadAttention", "DifferentialAttention", "GroupQueryAttention"]
    # layer 3 is a 'local' pattern entry overridden to GQA: it keeps the entry's window
    assert [Case(PATTERN, i).build()[1].sliding_window for i in range(4)] == [8, 8, None, 8]


def test_measure_in_process_and_isolated():
    case = Case({**PATTERN, "attention_pattern": None, "attention_variants": {}, "attention_layers": {}})
    here = measure(case, 256, repeats=1)
    assert here["seconds"] > 0 and math.isfinite(here["peak_mib"]) and here["peak_mib"] >= 0
    longer = {**PATTERN, "attention_pattern": None, "attention_variants": {}, "attention_layers": {},
              "attention": {"type": "sparse", "sparse_pattern": "topk", "sparse_top_k": 4}}
    found = scaling({"mha": case, "topk": Case(longer)}, [64, 20000], rounds=1, repeats=1)  # fresh processes
    assert found[("mha", 64)]["seconds"] > 0 and math.isfinite(found[("mha", 64)]["peak_mib"])
    assert found[("topk", 64)]["seconds"] > 0
    # 4 heads x 20000^2 fp32 scores is 6 GiB: skipped with the reason, nothing run
    assert found[("topk", 20000)] == {"skipped": "top-k scores every key first: 6.0 GiB of scores at 20000"}
    assert found[("mha", 20000)]["seconds"] > found[("mha", 64)]["seconds"]


def test_a_failing_case_reports_its_error():
    results = queue.Queue()
    bad = Case({**PATTERN, "embed_dim": 30})  # 4 heads do not divide 30
    _child(bad, 16, {"repeats": 1}, results)
    error = results.get_nowait()["error"]
    assert error.startswith("ValueError") and "30" in error and "\n" not in error, error
