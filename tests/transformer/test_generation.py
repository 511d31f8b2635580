"""Generation: the KV cache changes nothing under greedy decoding, left padding works, limits are errors."""

import pytest
import torch

from transformer.generation import generate, prefill, sample_next
from transformer.transformer_model import build_model

from .test_models import tiny


@pytest.mark.parametrize("positional", ["rope", "alibi"])
@pytest.mark.parametrize("attention_type", ["mha", "mqa", "gqa", "mla"])
def test_cached_greedy_equals_recomputed_greedy_with_left_padding(attention_type, positional):
    model = build_model(tiny("lm", attention_type, attention={"positional": positional}))
    prompts = torch.randint(1, 97, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0  # left padding: prompt 1 is 4 tokens long
    mask[2, :5] = 0
    prompts = prompts.masked_fill(mask == 0, 0)
    cached = generate(model, prompts, 12, temperature=0, attention_mask=mask)
    recomputed = generate(model, prompts, 12, temperature=0, attention_mask=mask, use_cache=False)
    assert cached.shape == (3, 19) and torch.equal(cached, recomputed)
    alone = generate(model, prompts[1:2, 3:], 12, temperature=0)  # the same prompt without padding
    assert torch.equal(alone[0, 4:], cached[1, 7:])


def test_learned_positions_with_left_padding_match_unpadded():
    model = build_model(tiny("lm", "gqa", position="learned", attention={"positional": "none"}))
    prompt = torch.randint(1, 97, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    assert torch.equal(generate(model, padded, 6, temperature=0, attention_mask=mask)[:, 8:],
                       generate(model, prompt, 6, temperature=0)[:, 5:])


def test_seq2seq_generate_with_cached_memory_equals_recomputed():
    model = build_model(tiny("encoder_decoder", "gqa", attention={"positional": "relative"}))
    src = torch.randint(1, 97, (2, 9))
    mask = torch.ones_like(src)
    mask[0, 6:] = 0
    a = model.generate(src, 10, temperature=0, attention_mask=mask)
    b = model.generate(src, 10, temperature=0, attention_mask=mask, use_cache=False)
    assert a.shape == (2, 11) and torch.equal(a, b)
    assert torch.equal(model.generate(src, 10, temperature=0, attention_mask=mask, cache="paged",
                                      cache_options={"block_size": 4}), a)
    assert model.generate(src, 10, temperature=0, attention_mask=mask, cache="int8").shape == (2, 11)


def test_stops_at_eos_and_refuses_to_exceed_max_seq_len():
    model = build_model(tiny("lm", "mha", max_seq_len=16))
    prompt = torch.randint(1, 97, (2, 4))
    first = generate(model, prompt, 1, temperature=0)[:, -1]
    out = generate(model, prompt, 8, temperature=0, eos_token_id=int(first[0]), pad_token_id=0)
    assert out[0, 4] == first[0] and (out[0, 5:] == 0).all()
    with pytest.raises(ValueError, match=r"4 \+ max_new_tokens 13 = 17 exceeds model.max_seq_len=16.*slide=True"):
        generate(model, prompt, 13)


def _sliding_reference(model, tokens, n):
    """Greedy decoding past the context, written from the rule: when the window would exceed max_seq_len,
    it restarts at the newest max_seq_len - max_seq_len // 4 tokens, re-encoded from position 0."""
    limit, keep = model.cfg.max_seq_len, model.cfg.max_seq_len - model.cfg.max_seq_len // 4
    start = 0 if tokens.shape[1] <= limit else tokens.shape[1] - keep
    for _ in range(n):
        if tokens.shape[1] - start > limit:
            start = tokens.shape[1] - keep
        with torch.no_grad():
            logits = model(tokens[:, start:]).logits[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("setting", [dict(attention={"positional": "rope"}), dict(attention={"positional": "alibi"}),
                                     dict(position="learned", attention={"positional": "none"}),
                                     dict(attention={"positional": "rope", "sliding_window": 5})])
def test_sliding_context_keeps_generating_past_max_seq_len(setting):
    model = build_model(tiny("lm", "gqa", max_seq_len=16, **setting)).eval()
    prompt = torch.randint(1, 97, (2, 6))
    out = generate(model, prompt, 40, temperature=0, slide=True)
    assert out.shape == (2, 46)
    assert torch.equal(out, _sliding_reference(model, prompt, 40))
    assert torch.equal(out, generate(model, prompt, 40, temperature=0, slide=True, use_cache=False))
    assert torch.equal(out[:, :16], generate(model, prompt, 10, temperature=0))  # unchanged inside the context
    long_prompt = torch.randint(1, 97, (1, 30))  # longer than the context: its newest tokens are the window
    assert torch.equal(generate(model, long_prompt, 5, temperature=0, slide=True), _sliding_reference(model, long_prompt, 5))


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, temperature=1.0, top_k=2, top_p=None, generator=g).tolist()) == {2, 3}
    assert set(sample_next(logits, temperature=1.0, top_k=None, top_p=0.5, generator=g).tolist()) == {3}
    assert (sample_next(logits, temperature=0, top_k=None, top_p=None, generator=g) == 3).all()


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("positional", ["rope", "alibi", "relative", "none"])
@pytest.mark.parametrize("attention_type", ["mha", "mqa", "gqa", "mla"])
def test_chunked_prefill_equals_one_shot(attention_type, positional, window):
    """The prompt fed in chunks (with left padding) leaves the same cache and the same next-token logits."""
    overrides = {"position": "learned"} if positional == "none" else {}
    model = build_model(tiny("lm", attention_type, attention={"positional": positional, "sliding_window": window}, **overrides)).eval()
    prompts = torch.randint(1, 97, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    nxt = torch.randint(1, 97, (2, 1))
    full_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    with torch.no_grad():
        caches = model.new_caches(2, 12)
        want = prefill(model, prompts, caches, mask)
        want_next = model(nxt, attention_mask=full_mask, caches=caches, num_logits=1).logits[:, -1]
        for chunk in (1, 3, 5, 11, 64):
            caches = model.new_caches(2, 12)
            torch.testing.assert_close(prefill(model, prompts, caches, mask, chunk), want, atol=1e-5, rtol=1e-4)
            got_next = model(nxt, attention_mask=full_mask, caches=caches, num_logits=1).logits[:, -1]
            torch.testing.assert_close(got_next, want_next, atol=1e-5, rtol=1e-4)


def test_generate_with_prefill_chunk_gives_the_same_tokens_and_checks_it():
    model = build_model(tiny("lm", "gqa"))
    prompts = torch.randint(1, 97, (2, 20))
    one_shot = generate(model, prompts, 8, temperature=0)
    lengths = []
    hook = model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    assert torch.equal(generate(model, prompts, 8, temperature=0, prefill_chunk=6), one_shot)
    hook.remove()
    assert lengths == [6, 6, 6, 2] + [1] * 7  # the prompt in chunks, then one token per step
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="prefill_chunk"):
            generate(model, prompts, 8, prefill_chunk=bad)
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, prompts, 8, prefill_chunk=4, use_cache=False)
