"""The lm-eval model over the toolkit's model: the same scores as lm-eval's own ``hf`` backend on the toolkit's
Hugging Face export, generation that stops at the given strings, and contexts past ``max_seq_len`` refused."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402

from transformer.evaluation.lm import ContextTooLong, ToolkitLM  # noqa: E402
from transformer.evaluation.runner import evaluate  # noqa: E402


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


PAIRS = [("the quick brown", " fox"), ("the quick brown", " dog"), ("the lazy", " dog. the quick"),
         ("jumps over", " the lazy dog."), ("the", " quick brown fox jumps over the lazy dog"), ("", "the quick"),
         ("over the lazy dog. ", "the quick brown fox")]


@pytest.fixture(scope="module")
def hflm(trained):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(trained["hf"]), batch_size=3, device="cpu", dtype="float32")


def test_loglikelihoods_equal_lm_eval_hf_backend(trained, hflm):
    ours = ToolkitLM.from_source(trained["export"], batch_size=4)
    mine = ours.loglikelihood(_requests("loglikelihood", PAIRS))
    theirs = hflm.loglikelihood(_requests("loglikelihood", PAIRS))
    for (a, greedy_a), (b, greedy_b), pair in zip(mine, theirs, PAIRS):
        assert a == pytest.approx(b, abs=1e-4), pair
        assert greedy_a == greedy_b, pair
    assert any(g for _, g in mine) and not all(g for _, g in mine)  # the trained model knows some continuations
    # batch size changes nothing
    single = ToolkitLM.from_source(trained["export"], batch_size=1).loglikelihood(_requests("loglikelihood", PAIRS))
    assert [round(x, 5) for x, _ in single] == [round(x, 5) for x, _ in mine]


def test_rolling_loglikelihood_equals_hf_backend_over_several_windows(trained, hflm):
    text = "the quick brown fox jumps over the lazy dog. " * 12  # longer than the 32-token context: several windows
    ours = ToolkitLM.from_source(trained["export"])
    assert len(ours.tok_encode(text)) > 2 * ours.max_length
    mine = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,), ("the lazy dog",)]))
    theirs = hflm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,), ("the lazy dog",)]))
    assert mine == pytest.approx(theirs, abs=1e-3)


def test_multiple_choice_task_scores_equal_hf_backend(trained, hflm, tmp_path):
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    docs = [{"q": "the quick brown", "choices": [" fox", " dog", " cat"], "gold": 0},
            {"q": "over the lazy", "choices": [" fox", " dog", " jumps"], "gold": 1},
            {"q": "the quick brown fox", "choices": [" sleeps", " jumps", " the"], "gold": 1},
            {"q": "jumps over the", "choices": [" quick", " brown", " lazy"], "gold": 2}]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'tiny.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    ours = ToolkitLM.from_source(trained["export"])
    kwargs = dict(tasks=["tiny_mc"], task_manager=manager, log_samples=True, bootstrap_iters=0)
    mine = evaluator.simple_evaluate(model=ours, **kwargs)
    theirs = evaluator.simple_evaluate(model=hflm, **kwargs)
    for a, b in zip(mine["samples"]["tiny_mc"], theirs["samples"]["tiny_mc"]):
        assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-4)
    assert mine["results"]["tiny_mc"]["acc,none"] == theirs["results"]["tiny_mc"]["acc,none"]
    assert mine["results"]["tiny_mc"]["acc,none"] >= 0.5  # above chance (1/3): it has learnt some of the sentence
    # the toolkit's runner gives the same figure, with the task from an include path
    results = evaluate(ours, ["tiny_mc"], work_dir=tmp_path / "work", include_path=str(tmp_path))
    assert results["tiny_mc"]["acc"] == mine["results"]["tiny_mc"]["acc,none"]


def test_generate_until_stops_at_the_given_strings(trained):
    lm = ToolkitLM.from_source(trained["export"], batch_size=2)
    prompts = ["the quick brown", "jumps over the lazy dog. the"]
    free = lm.generate_until(_requests("generate_until", [(p, {"max_gen_toks": 16}) for p in prompts]))
    assert all(f.count("dog") >= 2 for f in free)  # greedy goes on past the stop string (twice)
    until = {"until": ["zebra", "dog"], "max_gen_toks": 16}
    stopped = lm.generate_until(_requests("generate_until", [(p, until) for p in prompts]))
    assert stopped == [f.split("dog")[0] for f in free] and all(stopped)
    # it stops as soon as the string appears: it does not run all 16 tokens
    calls = []
    model_forward = lm.model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return model_forward(*args, **kwargs)

    lm.model.forward = counting
    lm.generate_until(_requests("generate_until", [(prompts[0], until)]))
    lm.model.forward = model_forward
    assert len(calls) < 12
    # one request alone gives what it gave in a batch
    alone = lm.generate_until(_requests("generate_until", [(prompts[1], until)]))
    assert alone == stopped[1:]


def test_contexts_past_the_model_context_are_refused(trained):
    lm = ToolkitLM.from_source(trained["export"])
    long = "the quick brown fox jumps over the lazy dog. " * 10
    with pytest.raises(ContextTooLong, match=r"model.max_seq_len\) is 32.*rope_scaling"):
        lm.loglikelihood(_requests("loglikelihood", [(long, " the")]))
    with pytest.raises(ContextTooLong, match="max_seq_len"):
        lm.generate_until(_requests("generate_until", [(long, {"max_gen_toks": 4})]))


def test_rope_scaling_lets_longer_contexts_run(trained):
    from transformer.evaluation.lm import context_limit

    lm = ToolkitLM.from_source(trained["export"])
    assert context_limit(lm.model.cfg) == 32
    lm.model.cfg.attention.rope_scaling, lm.model.cfg.attention.rope_scaling_factor = "linear", 4.0
    assert context_limit(lm.model.cfg) is None
    long = "the quick brown fox jumps over the lazy dog. " * 6
    [(logprob, _)] = lm.loglikelihood(_requests("loglikelihood", [(long, " the")]))
    assert torch.isfinite(torch.tensor(logprob))


@pytest.mark.parametrize("attention", [
    {"type": "gqa", "num_kv_heads": 2}, {"type": "mla", "kv_lora_rank": 16, "rope_head_dim": 8},
    {"type": "mha", "sliding_window": 8}, {"type": "linear", "positional": "none"}, {"type": "differential"}, {"type": "mha", "positional": "alibi"}])
def test_shared_context_scoring_equals_one_pass_per_request(attention):
    """Choices that share a context run it once through the KV cache: the same scores as one pass per request."""
    from transformer.config import ModelConfig
    from transformer.data.tokenizer import CharTokenizer
    from transformer.transformer_model import build_model

    tok = CharTokenizer.train(["the quick brown fox jumps over the lazy dog. 0123456789"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=64,
                                    attention={"positional": "rope", **attention})).eval()
    lm = ToolkitLM(model, tok, batch_size=3)
    context = "the quick brown fox jumps over the lazy dog. the quick"
    reqs = _requests("loglikelihood", [(context, c) for c in (" brown", " dog", " fox jumps", " 0123")] + [("the", " lazy")])
    shared = lm.loglikelihood(reqs)
    rows = [(None, ids[:-1], ids[len(ids) - len(cont):]) for ids, cont in
            ((lm.tok_encode(c + x), lm.tok_encode(c + x)[len(lm.tok_encode(c)):]) for c, x in (r.args for r in reqs))]
    with torch.no_grad():
        alone = [lm._score_batch([row])[0] for row in rows]
    assert [s for s, _ in shared] == pytest.approx([s for s, _ in alone], abs=1e-4)
    assert [g for _, g in shared] == [g for _, g in alone]


def test_requests_after_one_preamble_share_it_and_score_as_alone():
    """Different questions after one long preamble (few-shot examples, a system prompt): the preamble runs once,
    and every score is what one pass per request gives."""
    from transformer.config import ModelConfig
    from transformer.data.tokenizer import CharTokenizer
    from transformer.evaluation.lm import shared_prefix_groups
    from transformer.transformer_model import build_model

    tok = CharTokenizer.train(["the quick brown fox jumps over the lazy dog. 0123456789?"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=128,
                                    attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"})).eval()
    lm = ToolkitLM(model, tok, batch_size=4)
    preamble = "the quick brown fox jumps over the lazy dog. " * 1 + "the lazy dog jumps over the quick brown fox. "
    pairs = [(preamble + q, a) for q, a in (("the fox?", " 1"), ("a dog?", " 22"), ("the quick fox jumps?", " 0"),
                                              ("over?", " the lazy"), ("brown dog?", " 9"))] + [("zzz", " 1")]
    reqs = _requests("loglikelihood", pairs)
    rows = [(i, ids[:-1], ids[len(ids) - len(cont):]) for i, (ids, cont) in enumerate(
        (lm.tok_encode(c + x), lm.tok_encode(c + x)[len(lm.tok_encode(c)):]) for c, x in (r.args for r in reqs))]
    groups, single = shared_prefix_groups(rows)
    assert len(groups) == 1 and len(groups[0][1]) == 5 and len(groups[0][0]) >= len(lm.tok_encode(preamble))
    assert [r[0] for r in single] == [5]
    shared = lm.loglikelihood(reqs)
    with torch.no_grad():
        alone = [lm._score_batch([row])[0] for row in rows]
    assert [s for s, _ in shared] == pytest.approx([s for s, _ in alone], abs=1e-4)
