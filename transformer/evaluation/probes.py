"""Built-in probes: synthetic tasks generated deterministically from a seed, needing no download, each written
as an lm-eval task (a JSONL file + a task YAML with ``dataset_path: json``) so one lm-eval run scores them all.

Every probe is a 4-way multiple choice scored by log-likelihood (lm-eval's ``acc``), so **chance is 0.25**
and the wrong choices are drawn exactly as the right one is (exchangeable): a model that ignores the context
scores 0.25 on average whatever it prefers.

* ``passkey_<n>`` — a random key hidden in ``n`` tokens of repeated filler at depths 0, 0.25, 0.5, 0.75 and 1
  (Mohtashami & Jaggi, 2023, "Landmark attention"); the wrong choices are other random keys.
* ``assoc_recall_<n>`` — multi-query associative recall (Arora et al., 2023, "Zoology"): ``key: value`` pairs,
  then a few answered queries, then one key to complete; the wrong choices are other values of the list.
* ``copying_<n>`` — a random string, then its first half again; the model completes the second half; the
  wrong choices are other random strings of the same length.

The symbols (keys, values, strings) are digits when the tokenizer spells them back exactly, else the
lower-case letters it does (a character tokenizer trained on text without digits), so a probe never
contains a token the model cannot read. ``n`` counts tokens of the model's own tokenizer: the longest
context plus choice fits in ``n``.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

PROBES = ("passkey", "assoc_recall", "copying")
EXTRAPOLATION = "length_extrapolation"
ALL_PROBES = "probes"  # every probe at the default lengths, and the extrapolation figures
CHOICES = 4
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INTRO = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it."
QUESTION = " What is the pass key? The pass key is"


@dataclass
class ProbeTask:
    name: str  # e.g. passkey_256: the lm-eval task name
    probe: str  # passkey | assoc_recall | copying
    length: int  # tokens per context + choice, at most
    docs: list[dict]


def default_lengths(max_seq_len: int) -> list[int]:
    """A quarter, half and all of the model's context."""
    return sorted({max(16, max_seq_len // 4), max(16, max_seq_len // 2), max_seq_len})


def parse_probe_name(name: str) -> tuple[str, int | None] | None:
    """``passkey`` -> ("passkey", None); ``passkey_256`` -> ("passkey", 256); anything else -> None."""
    for probe in PROBES:
        if name == probe:
            return probe, None
        if name.startswith(probe + "_") and name[len(probe) + 1:].isdigit():
            return probe, int(name[len(probe) + 1:])
    return None


class _Text:
    """Token counting and the probe alphabet for one tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def spells(self, text: str) -> bool:
        return self.tokenizer.decode(self.tokenizer.encode(text, add_special_tokens=False)) == text

    def alphabet(self) -> str:
        if all(self.spells(f" {d}") for d in string.digits):
            return string.digits
        letters = "".join(c for c in string.ascii_lowercase if self.spells(f" {c}"))
        if len(letters) < 8:
            raise ValueError("the tokenizer cannot spell digits or at least 8 lower-case letters (with a space before): "
                             "the probes need them for keys and values")
        return letters

    def adapt(self, text: str, probe: str) -> str:
        """``text`` as this vocabulary can write it: unchanged when it can, else lower-cased where needed and without
        the characters it lacks (a character tokenizer trained on lower-case text without ``:``)."""
        if self.spells(text):
            return text
        kept = [c if self.spells(c) else c.lower() for c in text if c == " " or self.spells(c) or self.spells(c.lower())]
        result = re.sub(" +", " ", "".join(kept))
        lost_words = any(c.isalnum() for c in text) and not any(c.isalnum() for c in result)
        if lost_words or (result.strip() and not self.spells(result)):  # punctuation alone may go: "." -> ""
            raise ValueError(f"probe {probe}: the tokenizer cannot spell {text[:60]!r} (nor a lower-case version of it) "
                             f"back exactly: its vocabulary lacks those characters")
        return result


def _fit(build, count, length: int, probe: str, start: int = 64):
    """The largest size ``k`` whose ``build(k)`` (context, longest choice) fits ``length`` tokens."""
    def fits(k: int) -> bool:
        context, choice = build(k)
        return count(context + choice) <= length

    if not fits(1):
        raise ValueError(f"probe {probe}: even the smallest example is longer than {length} tokens; use a longer probe length")
    low, high = 1, start
    while fits(high):  # grow until too long, then bisect
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _longest(text: _Text, context: str, choices: list[str]) -> int:
    return max(text.count(context + c) for c in choices)


def _check_fits(text: _Text, context: str, choices: list[str], length: int, probe: str) -> None:
    if _longest(text, context, choices) > length:  # the slack left by _fit was not enough for this tokenizer
        raise ValueError(f"probe {probe}: a generated example is {_longest(text, context, choices)} tokens, over its "
                         f"length {length}; this tokenizer splits the random symbols unevenly: use a longer probe length")


def _shuffle_choices(rng: random.Random, gold: str, others: list[str]) -> tuple[list[str], int]:
    choices = [gold, *others]
    rng.shuffle(choices)
    return choices, choices.index(gold)


def _random_word(rng: random.Random, alphabet: str, size: int, avoid: set[str]) -> str:
    while True:
        word = "".join(rng.choice(alphabet) for _ in range(size))
        if word not in avoid:
            avoid.add(word)
            return word


def make_passkey(tokenizer, length: int, n: int, seed: int) -> list[dict]:
    text = _Text(tokenizer)
    alphabet = text.alphabet()
    say = {name: text.adapt(words, "passkey") for name, words in (
        ("intro", INTRO), ("question", QUESTION), ("short_question", " The pass key is"), ("key_is", "The pass key is "),
        ("remember", ". Remember it. "), ("is_key", " is the pass key."), ("stop", "."))}
    rng = random.Random(f"passkey-{seed}-{length}")
    sentences = [text.adapt(s.strip() + ".", "passkey") for s in FILLER.split(".") if s.strip()]

    def build(k: int, depth: float = 0.5, key: str = "0" * 5, intro: bool = True):
        filler = [sentences[i % len(sentences)] for i in range(k - 1)]  # k - 1 filler sentences, cycling
        before = round(len(filler) * depth)
        needle = (say["key_is"] + key + (say["remember"] + key + say["is_key"] if intro else say["stop"]))
        body = " ".join(filler[:before] + [needle] + filler[before:])
        return (say["intro"] + " " if intro else "") + body + (say["question"] if intro else say["short_question"]), " " + key

    intro = text.count("".join(build(1))) <= length - 4  # short contexts: the needle and the question only
    repeats = _fit(lambda k: build(k, intro=intro), text.count, length - 4, "passkey", start=8)  # 4 tokens of slack
    docs = []
    for i in range(n):
        used: set[str] = set()
        key = _random_word(rng, alphabet, 5, used)
        depth = DEPTHS[i % len(DEPTHS)]
        choices, gold = _shuffle_choices(rng, " " + key, [" " + _random_word(rng, alphabet, 5, used) for _ in range(CHOICES - 1)])
        # this key may tokenise longer than the measured one: one filler sentence less until it fits
        context, _, _, k = _fitted(lambda k: (build(k, depth, key, intro)[0], choices, None), repeats, text, length,
                                   "passkey", 1)
        docs.append({"context": context, "choices": choices, "gold": gold, "depth": depth, "filler_sentences": k - 1})
    return docs


def _fitted(make_doc, size: int, text: _Text, length: int, probe: str, smallest: int):
    """``make_doc(size)`` -> (context, choices, extra), shrinking ``size`` until every choice fits ``length``."""
    while True:
        context, choices, extra = make_doc(size)
        if _longest(text, context, choices) <= length:
            return context, choices, extra, size
        if size <= smallest:
            _check_fits(text, context, choices, length, probe)
        size -= 1


def make_assoc_recall(tokenizer, length: int, n: int, seed: int, answered: int = 3) -> list[dict]:
    """``k1: v1, ..., kN: vN. kq1: vq1, ..., kq:`` -> `` vq``: up to ``answered`` queries answered before the asked
    one (fewer when the context is short)."""
    text = _Text(tokenizer)
    alphabet = text.alphabet()
    colon, comma, stop = (text.adapt(p, "assoc_recall") for p in (": ", ", ", ". "))
    rng = random.Random(f"assoc_recall-{seed}-{length}")
    sizes = {"key": 3, "value": 2}

    def make_doc(pairs: int, draw: random.Random = rng):
        used_keys: set[str] = set()
        used_values: set[str] = set()
        keys = [_random_word(draw, alphabet, sizes["key"], used_keys) for _ in range(pairs)]
        values = [_random_word(draw, alphabet, sizes["value"], used_values) for _ in range(pairs)]
        queries = draw.sample(range(pairs), min(answered + 1, pairs))
        listing = comma.join(k + colon + v for k, v in zip(keys, values))
        asked = comma.join(keys[q] + colon + values[q] for q in queries[:-1])
        context = listing + stop + (asked + comma if asked else "") + keys[queries[-1]] + colon.rstrip()
        others = [" " + values[j] for j in draw.sample([j for j in range(pairs) if j != queries[-1]], CHOICES - 1)]
        choices, gold = _shuffle_choices(draw, " " + values[queries[-1]], others)
        return context, choices, gold

    def probe_size() -> int:  # pairs that fit, measured on one random document (keys / values distinct per doc)
        def build(k: int):
            context, choices, _ = make_doc(max(k, CHOICES), random.Random(0))
            return context, max(choices, key=len)
        return _fit(build, text.count, length, "assoc_recall", start=8)

    while True:
        try:
            pairs = probe_size()
            break
        except ValueError:
            if answered == 0:
                raise
            answered -= 1  # a short context: fewer answered queries
    while len(alphabet) ** sizes["value"] < 2 * pairs or len(alphabet) ** sizes["key"] < 2 * pairs:
        sizes = {"key": sizes["key"] + 1, "value": sizes["value"] + 1}  # enough distinct keys and values
        pairs = probe_size()
    docs = []
    for _ in range(n):
        context, choices, gold, used = _fitted(make_doc, pairs, text, length, "assoc_recall", CHOICES)
        docs.append({"context": context, "choices": choices, "gold": gold, "pairs": used})
    return docs


def make_copying(tokenizer, length: int, n: int, seed: int) -> list[dict]:
    text = _Text(tokenizer)
    alphabet = text.alphabet()
    sep = "\n" if text.spells("a\nb") else text.adapt(". ", "copying")  # a line break where the vocabulary has one
    label, again = text.adapt("Text: ", "copying"), text.adapt("Again: ", "copying")
    rng = random.Random(f"copying-{seed}-{length}")

    def make_doc(half: int, draw: random.Random = rng):
        used: set[str] = set()
        words = [_random_word(draw, alphabet, 4, used) for _ in range(2 * half)]
        context = label + " ".join(words) + sep + again + " ".join(words[:half])
        others = [" " + " ".join(_random_word(draw, alphabet, 4, used) for _ in range(half)) for _ in range(CHOICES - 1)]
        choices, gold = _shuffle_choices(draw, " " + " ".join(words[half:]), others)
        return context, choices, gold

    def build(k: int):
        context, choices, _ = make_doc(k, random.Random(0))
        return context, max(choices, key=len)

    half = _fit(build, text.count, length, "copying", start=4)
    docs = []
    for _ in range(n):
        context, choices, gold, used = _fitted(make_doc, half, text, length, "copying", 1)
        docs.append({"context": context, "choices": choices, "gold": gold, "words": 2 * used})
    return docs


MAKERS = {"passkey": make_passkey, "assoc_recall": make_assoc_recall, "copying": make_copying}


def probe_tasks(names: list[tuple[str, int]], tokenizer, *, docs: int, seed: int) -> list[ProbeTask]:
    """``(probe, length)`` pairs -> generated tasks (the same documents for the same tokenizer, length and seed)."""
    if docs < 1:
        raise ValueError(f"probe documents per task = {docs}; it must be >= 1")
    return [ProbeTask(f"{probe}_{length}", probe, length, MAKERS[probe](tokenizer, length, docs, seed))
            for probe, length in names]


def task_yaml(task: ProbeTask, data_file: Path) -> str:
    """An lm-eval task config over a local JSONL file: 4-way multiple choice, accuracy."""
    config = {
        "task": task.name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices",
        "doc_to_target": "gold", "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "generator": "transformer.evaluation.probes", "length": task.length},
    }
    return json.dumps(config, indent=2)  # JSON is YAML: no dependency on a YAML writer's quoting


def write_tasks(tasks: list[ProbeTask], directory: Path) -> Path:
    """Each task's documents (``<name>.jsonl``) and config (``<name>.yaml``) in ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        data = directory / f"{task.name}.jsonl"
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in task.docs), encoding="utf-8")
        (directory / f"{task.name}.yaml").write_text(task_yaml(task, data.resolve()), encoding="utf-8")
    return directory
