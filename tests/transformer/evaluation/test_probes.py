"""Built-in probes: deterministic documents, an in-context lookup oracle ("told the answer": it reads it from the
context) scores 1.0 through lm-eval, a random model scores at chance (0.25), and length extrapolation runs at 2x
and 4x the trained context."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from transformer.config import ModelConfig  # noqa: E402
from transformer.data.tokenizer import BPETokenizer, CharTokenizer  # noqa: E402
from transformer.evaluation.extrapolation import length_extrapolation  # noqa: E402
from transformer.evaluation.lm import ToolkitLM  # noqa: E402
from transformer.evaluation.probes import PROBES, probe_tasks, write_tasks  # noqa: E402
from transformer.evaluation.runner import evaluate, plan_tasks, run_lm_eval  # noqa: E402
from transformer.transformer_model import build_model  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. " * 50 + "".join(chr(c) for c in range(32, 127))


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train([TEXT])


@pytest.fixture(scope="module")
def bpe_tok():
    return BPETokenizer.train(iter([TEXT * 4]), 300)


class LookupOracle(LM):
    """Scores a continuation 0 when the context's last word followed by it occurs earlier in the context (the
    answer is *there*: the needle, the key's pair, the copied text), else -10: an induction head, exactly."""

    def __init__(self):
        super().__init__()
        self._rank, self._world_size = 0, 1

    def loglikelihood(self, requests):
        out = []
        for req in requests:
            context, continuation = req.args
            head, _, tail = context.rpartition(" ")
            found = (tail + continuation) in head
            out.append((0.0 if found else -10.0, found))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


def test_probe_documents_are_deterministic_for_a_seed(char_tok, bpe_tok):
    for tok in (char_tok, bpe_tok):
        names = [(p, 96) for p in PROBES]
        first = probe_tasks(names, tok, docs=10, seed=3)
        again = probe_tasks(names, tok, docs=10, seed=3)
        other = probe_tasks(names, tok, docs=10, seed=4)
        assert [t.docs for t in first] == [t.docs for t in again]
        assert all(a.docs != b.docs for a, b in zip(first, other))
        for task in first:  # every document fits its length in this tokenizer's tokens, with 4 distinct choices
            for doc in task.docs:
                assert max(len(tok.encode(doc["context"] + c)) for c in doc["choices"]) <= 96
                assert len(set(doc["choices"])) == 4 and 0 <= doc["gold"] < 4
        golds = [d["gold"] for t in first for d in t.docs]
        assert len(set(golds)) > 1  # the right answer's position varies


def test_passkey_depths_and_symbols(char_tok, bpe_tok):
    [task] = probe_tasks([("passkey", 200)], bpe_tok, docs=10, seed=0)
    assert {d["depth"] for d in task.docs} == {0.0, 0.25, 0.5, 0.75, 1.0}
    for doc in task.docs:
        key = doc["choices"][doc["gold"]].strip()
        assert key.isdigit() and f"The pass key is {key}." in doc["context"]
        assert all(c.strip() not in doc["context"] for i, c in enumerate(doc["choices"]) if i != doc["gold"])
    from transformer.evaluation.probes import FILLER, INTRO, QUESTION

    no_digits = CharTokenizer.train([FILLER + INTRO + QUESTION + " Remember it. abcdefghijklmnopqrstuvwxyz"])
    [task] = probe_tasks([("passkey", 64)], no_digits, docs=3, seed=0)
    assert all(d["choices"][0].strip().isalpha() for d in task.docs)  # letters where the tokenizer has no digits


def test_a_model_told_the_answer_scores_one(char_tok, tmp_path):
    plan = plan_tasks(["passkey_128", "assoc_recall_128", "copying_128"], max_seq_len=128, context_limit=128)
    results = run_lm_eval(_OracleWithTokenizer(char_tok), plan, probe_docs=40, seed=0, work_dir=tmp_path)
    assert {name: values["acc"] for name, values in results.items()} == {
        "passkey_128": 1.0, "assoc_recall_128": 1.0, "copying_128": 1.0}


class _OracleWithTokenizer(LookupOracle):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer


def test_a_random_model_scores_at_chance(char_tok, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=char_tok.vocab_size, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=96,
                                    attention={"type": "mha", "positional": "rope"})).eval()
    lm = ToolkitLM(model, char_tok, batch_size=32)
    docs = 150
    results = evaluate(lm, ["passkey_96", "assoc_recall_96", "copying_96"], work_dir=tmp_path, probe_docs=docs)
    accs = [values["acc"] for values in results.values()]
    pooled = sum(accs) / len(accs)
    sigma = math.sqrt(0.25 * 0.75 / (docs * len(accs)))
    assert abs(pooled - 0.25) < 3.5 * sigma, accs  # chance is 1/4: the wrong choices are drawn as the right one
    assert all(abs(a - 0.25) < 3.5 * math.sqrt(0.25 * 0.75 / docs) for a in accs), accs


def test_task_files_are_lm_eval_tasks_over_local_json(char_tok, tmp_path):
    [task] = probe_tasks([("copying", 64)], char_tok, docs=5, seed=0)
    write_tasks([task], tmp_path)
    config = json.loads((tmp_path / "copying_64.yaml").read_text())
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "copying_64.jsonl").resolve())
    assert len((tmp_path / "copying_64.jsonl").read_text().splitlines()) == 5


def _model(position="none", positional="rope", seq=16, vocab=50):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=vocab, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=seq,
                                   position=position, attention={"type": "mha", "positional": positional})).eval()


@pytest.mark.parametrize("position,positional", [("none", "rope"), ("none", "alibi"), ("sinusoidal", "none"), ("none", "none")])
def test_length_extrapolation_runs_at_two_and_four_times_the_context(position, positional):
    model = _model(position, positional)
    tokens = np.random.default_rng(0).integers(0, 50, size=16 * 4 * 3 + 1)
    out = length_extrapolation(model, tokens, factors=(1, 2, 4), blocks=3)
    assert set(out) == {f"{k}@{f}x" for k in ("loss", "tail_loss") for f in (1, 2, 4)}
    assert all(math.isfinite(v) for v in out.values())
    # loss@1x is the model's own mean loss over the same tokens in 16-token blocks
    x = torch.from_numpy(tokens[:-1]).view(-1, 16)
    y = torch.from_numpy(tokens[1:]).view(-1, 16)
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    assert out["loss@1x"] == pytest.approx(float(direct), rel=1e-5)
    with torch.no_grad():  # and the model is back to its own context afterwards
        with pytest.raises(ValueError, match="max_seq_len") if position != "none" else _nothing():
            model(torch.zeros(1, 32, dtype=torch.long))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_learned_positions_do_not_extrapolate():
    out = length_extrapolation(_model("learned", "none"), np.arange(16 * 4 + 1) % 50, factors=(1, 2, 4), blocks=1)
    assert math.isfinite(out["loss@1x"]) and math.isnan(out["loss@2x"]) and math.isnan(out["tail_loss@4x"])


def test_extrapolation_needs_enough_tokens():
    with pytest.raises(ValueError, match=r"at least 65 validation tokens .*the split has 40"):
        length_extrapolation(_model(), np.arange(40) % 50, factors=(1, 2, 4))


def test_probes_fit_a_vocabulary_without_punctuation_or_capitals():
    """A character tokenizer trained on lower-case words alone (no '.', ':', ',' or capitals) still gets every probe,
    in its own spelling."""
    tok = CharTokenizer.train(["thou art the king of rome and all my lords shall speak to thee in love\n"])
    tasks = probe_tasks([(p, 64) for p in PROBES], tok, docs=5, seed=0)
    for task in tasks:
        for doc in task.docs:
            assert tok.decode(tok.encode(doc["context"])) == doc["context"]  # nothing it cannot spell
            assert max(len(tok.encode(doc["context"] + c)) for c in doc["choices"]) <= 64
    assert tasks[0].docs[0]["context"].startswith("the pass key is ")
