"""Chat / instruction data: template tokens equal transformers' apply_chat_template, labels are -100 exactly
off the assistant replies, bad rows are named by file, row and field, and packed loss equals unpacked loss."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

from transformer.data.chat import NAMED_TEMPLATES, encode_chat, resolve_template  # noqa: E402
from transformer.data.config import DataConfig  # noqa: E402
from transformer.data.sft import ExampleDataset, pack, pad_batch, prepare_examples  # noqa: E402
from transformer.data.tokenizer import load_tokenizer  # noqa: E402

from .helpers import make_tokenizer, write_chat_jsonl, write_instruction_jsonl  # noqa: E402

# A template in the style of real model files: a default system prompt, loop.last, raise_exception, tojson.
RICH = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set rest = messages[1:] %}"
    "{%- else %}{%- set system = 'You are helpful.' %}{%- set rest = messages %}{%- endif %}"
    "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- for message in rest %}"
    "{%- if message['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{%- endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{%- if not loop.last or message['role'] == 'assistant' %}{{ '\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say red please"},
                {"role": "assistant", "content": "red red"}, {"role": "user", "content": "and blue?"},
                {"role": "assistant", "content": " blue blue "}]


@pytest.mark.parametrize("template", ["own", "rich", "llama3"])
def test_template_tokens_equal_apply_chat_template(template, tmp_path):
    fast = make_tokenizer(tmp_path, chat_template=RICH if template == "rich" else None if template == "llama3" else
                          NAMED_TEMPLATES["chatml"])
    ours = load_tokenizer(tmp_path)
    text, _ = resolve_template("llama3" if template == "llama3" else None, ours)
    ids, trained = encode_chat(ours, text, CONVERSATION, "assistant")
    expected = fast.apply_chat_template(CONVERSATION, tokenize=True, chat_template=text if template == "llama3" else None)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ids == list(expected)
    assert len(trained) == len(ids)


def test_labels_are_ignored_exactly_off_the_assistant_replies(tmp_path):
    make_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    template, _ = resolve_template(None, tok)
    ids, trained = encode_chat(tok, template, CONVERSATION, "assistant")
    pieces = "".join(tok.decode([i]) for i, t in zip(ids, trained) if t)
    assert pieces == "red red<|im_end|>\n blue blue <|im_end|>\n"  # each reply and its end of turn, nothing else
    ids_c, trained_c = encode_chat(tok, template, CONVERSATION, "completion")
    assert ids_c == ids and "".join(tok.decode([i]) for i, t in zip(ids, trained_c) if t) == " blue blue <|im_end|>\n"
    assert all(encode_chat(tok, template, CONVERSATION, "all")[1])
    x, y = ExampleDataset(torch.tensor(ids).numpy(), torch.tensor(trained).numpy(), torch.tensor([0, len(ids)]).numpy())[0]
    assert torch.equal(x, torch.tensor(ids[:-1]))
    assert [t for t in y.tolist() if t != -100] == [i for i, t in zip(ids[1:], trained[1:]) if t]
    assert ((y == -100) == ~torch.tensor(trained[1:])).all()


def _cfg(tmp_path, path, **kw):
    kw.setdefault("block_size", 48)
    return DataConfig(source="files", path=str(path), tokenizer=str(tmp_path / "tok"), val_fraction=0.25, **kw)


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     r"bad.jsonl row 2: field messages\[0\].role='human' is not one of system, user, assistant, tool"),
    ({"conversation": []}, r"bad.jsonl row 2: no field 'messages' \(data.messages_column\) \(fields: conversation\)"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     r"bad.jsonl row 2: field messages\[1\].content is an empty assistant response"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"bad.jsonl row 2: field 'messages' has no assistant message"),
])
def test_bad_chat_rows_are_named_by_file_row_and_field(row, message, tmp_path):
    make_tokenizer(tmp_path / "tok")
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        prepare_examples(_cfg(tmp_path, path, format="chat"), seed=0, cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # a failed build leaves no cache behind


def test_instruction_rows_missing_column_and_empty_output(tmp_path):
    make_tokenizer(tmp_path / "tok")
    path = tmp_path / "inst.jsonl"
    path.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"instruction": "x", "response": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"inst.jsonl row 2: no field 'output' \(data.output_column\) \(fields: instruction, response\)"):
        prepare_examples(_cfg(tmp_path, path, format="instruction"), seed=0, cache_root=tmp_path / "cache")
    path.write_text(json.dumps({"instruction": "x", "output": ""}) + "\n")
    with pytest.raises(ValueError, match=r"inst.jsonl row 1: field 'output' \(the response\) is empty"):
        prepare_examples(_cfg(tmp_path, path, format="instruction"), seed=0, cache_root=tmp_path / "cache")


def test_overlong_examples_are_truncated_or_dropped_and_counted(tmp_path):
    make_tokenizer(tmp_path / "tok")
    path = write_instruction_jsonl(tmp_path / "inst.jsonl", n=20)
    long = {"instruction": "repeat " * 100, "output": "red"}
    path.write_text(path.read_text() + json.dumps(long) + "\n")
    kept = prepare_examples(_cfg(tmp_path, path, format="instruction", overlong="drop", block_size=96), seed=0,
                            cache_root=tmp_path / "c1")
    assert kept.counts["dropped_overlong"] == 1 and kept.counts["train_examples"] + kept.counts["val_examples"] == 20
    cut = prepare_examples(_cfg(tmp_path, path, format="instruction", block_size=96), seed=0, cache_root=tmp_path / "c2")
    assert cut.counts["truncated"] == 0 and cut.counts["dropped_untrained"] == 1  # cut before its response: nothing to train


def test_packed_loss_equals_unpacked_loss(tmp_path):
    from transformer.config import ModelConfig
    from transformer.transformer_model import build_model

    make_tokenizer(tmp_path / "tok")
    corpus = prepare_examples(_cfg(tmp_path, write_chat_jsonl(tmp_path / "chat.jsonl", n=24), format="chat"), seed=0,
                              cache_root=tmp_path / "cache")
    examples = ExampleDataset(*corpus.examples("train"))
    items = [examples[i] for i in range(len(examples))]
    model = build_model(ModelConfig(vocab_size=corpus.vocab_size, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=160,
                                    norm="rmsnorm", mlp="swiglu", attention={"type": "gqa", "num_kv_heads": 2,
                                                                            "positional": "rope"})).eval()
    blocks = pack(items, 160, corpus.pad_id)
    assert len(blocks) < len(items)  # several examples share a block
    x, y, positions, documents = (torch.stack(t) for t in zip(*blocks))
    with torch.no_grad():
        packed = model(x, y, position_ids=positions, document_ids=documents)
        px, py = pad_batch(items, pad_id=corpus.pad_id)
        unpacked = model(px, py)
        alone = [model(ex[None], ey[None]) for ex, ey in items]
    per_example_sum = sum(o.loss * o.num_tokens for o in alone)
    count = sum(o.num_tokens for o in alone)
    assert packed.num_tokens == unpacked.num_tokens == count
    torch.testing.assert_close(packed.loss, per_example_sum / count, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unpacked.loss, per_example_sum / count, atol=1e-5, rtol=1e-5)
    sparse = model(px, py, logits_for_targets=True)  # the head only where a target is: the same loss
    assert sparse.logits.shape == (int(count), corpus.vocab_size)
    torch.testing.assert_close(sparse.loss, unpacked.loss, atol=1e-6, rtol=1e-6)


def test_head_only_at_targets_gives_the_same_gradients():
    from transformer.config import ModelConfig
    from transformer.transformer_model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=32, norm="rmsnorm",
                                    mlp="swiglu", attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"}))
    x = torch.randint(0, 50, (3, 20))
    y = torch.randint(0, 50, (3, 20)).masked_fill(torch.rand(3, 20) < 0.6, -100)
    grads = []
    for sparse in (False, True):
        model.zero_grad()
        model(x, y, logits_for_targets=sparse).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_text_packing_restarts_positions_and_documents_at_each_end_of_text():
    import numpy as np

    from transformer.data.datamodule import TokenWindows

    eos = 9
    tokens = np.array([1, 2, eos, 3, 4, 5, eos, 6, 7, 8, 1], dtype=np.uint16)
    x, y, positions, documents = TokenWindows(tokens, 8, documents_of=eos)[0]
    assert x.tolist() == [1, 2, 9, 3, 4, 5, 9, 6]
    assert positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert documents.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
