"""The data pipeline: tokenizers, splits, the memmap token store, samplers, and clear errors."""

import re
from itertools import islice

import numpy as np
import pytest
import torch

from transformer.data import BPETokenizer, CharTokenizer, LMDataModule, load_tokenizer, prepare_corpus
from transformer.data.datamodule import RandomWindowSampler, ShardSampler
from transformer.training.config import DataConfig


def files_cfg(path, **kw):
    base = dict(source="files", path=str(path), max_chars=None, block_size=16, batch_size=4)
    base.update(kw)
    return DataConfig(**base)


def test_char_and_bpe_tokenizers_round_trip(tmp_path):
    text = "Hello, world!\nSecond line."
    char = CharTokenizer.train([text])
    assert char.decode(char.encode(text)) == text and char.vocab_size == len(set(text)) + 1
    char.save(tmp_path / "c.json")
    assert load_tokenizer(tmp_path / "c.json").encode(text) == char.encode(text)
    bpe = BPETokenizer.train(iter([text * 50]), vocab_size=300)
    assert bpe.decode(bpe.encode("Hello, unseen wörld")) == "Hello, unseen wörld"  # byte-level: nothing is OOV
    bpe.save(tmp_path / "b.json")
    assert load_tokenizer(tmp_path / "b.json").encode(text) == bpe.encode(text)


def test_position_split_is_the_tail_and_store_is_uint16(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))
    (tmp_path / "t.txt").write_text(text)
    corpus = prepare_corpus(files_cfg(tmp_path / "t.txt"), seed=0, cache_root=tmp_path / "cache")
    tok = corpus.tokenizer()
    assert corpus.dtype == "uint16" and corpus.tokens("train").dtype == np.uint16
    val = tok.decode(corpus.tokens("val").tolist(), skip_special_tokens=True)
    assert val == text[4500:]  # the last 10% by position (and the end-of-text token after it)
    assert tok.decode(corpus.tokens("val").tolist()) == text[4500:] + "<|endoftext|>"
    assert tok.decode(corpus.tokens("train").tolist(), skip_special_tokens=True) == text[:4500]
    assert corpus.train_tokens == 4501 and corpus.val_tokens == 501  # + one EOS each


def test_document_split_and_cache_reuse(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(10):
        (tmp_path / "docs" / f"doc{i}.txt").write_text(f"document number {i} " * 20)
    cfg = files_cfg(tmp_path / "docs", split_by="document", val_fraction=0.2)
    first = prepare_corpus(cfg, seed=3, cache_root=tmp_path / "cache")
    stamp = (first.directory / "train.bin").stat().st_mtime_ns
    again = prepare_corpus(cfg, seed=3, cache_root=tmp_path / "cache")
    assert again.directory == first.directory and (again.directory / "train.bin").stat().st_mtime_ns == stamp
    assert first.val_tokens < first.train_tokens
    other_seed = prepare_corpus(cfg, seed=4, cache_root=tmp_path / "cache")
    assert other_seed.directory != first.directory


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        prepare_corpus(files_cfg(tmp_path / "missing.txt"), seed=0, cache_root=tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        prepare_corpus(files_cfg(tmp_path / "empty.txt"), seed=0, cache_root=tmp_path)
    (tmp_path / "short.txt").write_text("just a few characters here")
    with pytest.raises(ValueError, match=r"fewer than data.block_size \+ 1 = 17"):
        prepare_corpus(files_cfg(tmp_path / "short.txt"), seed=0, cache_root=tmp_path)
    (tmp_path / "t.csv").write_text("body\nsome text\nmore text\n")
    with pytest.raises(ValueError, match="data.text_column='text' is not a column.*body"):
        prepare_corpus(files_cfg(tmp_path / "t.csv"), seed=0, cache_root=tmp_path)


def test_json_csv_parquet_sources(tmp_path):
    import pandas as pd

    rows = pd.DataFrame({"text": [f"row {i} " * 30 for i in range(6)]})
    rows.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    rows.to_csv(tmp_path / "d.csv", index=False)
    rows.to_parquet(tmp_path / "d.parquet")
    counts = {prepare_corpus(files_cfg(tmp_path / f"d.{ext}"), seed=0, cache_root=tmp_path / "c").train_tokens
              for ext in ("jsonl", "csv", "parquet")}
    assert len(counts) == 1


def test_samplers_shard_without_duplicates():
    one = list(islice(RandomWindowSampler(1000, 64, 8, seed=1), 160))  # endless: 2.5 epochs of 8 batches
    ranks = [list(islice(RandomWindowSampler(1000, 64, 4, seed=1, rank=r, world_size=2), 80)) for r in range(2)]
    resumed = list(islice(RandomWindowSampler(1000, 64, 8, seed=1, start_batch=11), 40))
    assert resumed == one[88:128]  # starting at batch 11 continues the same stream
    for step in range(len(one) // 8):  # global batch k of 2 ranks x 4 == batch k of 1 rank x 8
        assert one[step * 8 : step * 8 + 8] == ranks[0][step * 4 : step * 4 + 4] + ranks[1][step * 4 : step * 4 + 4]
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_datamodule_batches(tmp_path, toy_corpus):
    dm = LMDataModule(files_cfg(toy_corpus), seed=0, cache_root=tmp_path / "cache", max_val_batches=2)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert sum(1 for _ in dm.val_dataloader()) == 2


def test_directory_with_mixed_formats_asks_for_data_format(tmp_path):
    (tmp_path / "a.txt").write_text("text " * 50)
    (tmp_path / "b.json").write_text('{"text": "json"}')
    with pytest.raises(ValueError, match="holds json and text files; set data.file_format"):
        prepare_corpus(files_cfg(tmp_path), seed=0, cache_root=tmp_path / ".cache")
    corpus = prepare_corpus(files_cfg(tmp_path, file_format="text"), seed=0, cache_root=tmp_path / ".cache")
    assert corpus.train_tokens > 0


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_one_large_file_is_tokenised_in_pieces_with_progress_and_the_same_ids(tmp_path, tokenizer, monkeypatch, capsys):
    from transformer.data import token_store

    rng = np.random.default_rng(0)
    words = ["thou", "art", "KING:", "  indented", "o'er", "'tis", "ROMEO.", "\t", "  ", "!?", "love's", "42"]
    lines = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(3000)]
    text = "\n".join(lines[i] + ("\n" if i % 7 == 0 else "") for i in range(len(lines)))  # blank lines, odd spacing
    (tmp_path / "big.txt").write_text(text)
    cfg = files_cfg(tmp_path / "big.txt", tokenizer=tokenizer, vocab_size=400)
    whole = prepare_corpus(cfg, seed=0, cache_root=tmp_path / "whole")
    capsys.readouterr()
    monkeypatch.setattr(token_store, "PIECE_CHARS", 500)  # cut the one document into ~100 pieces
    monkeypatch.setattr(token_store, "PROGRESS_CHARS", 1000)
    pieces = prepare_corpus(cfg, seed=0, cache_root=tmp_path / "pieces")
    out = capsys.readouterr().out
    for split in ("train", "val"):
        assert np.array_equal(whole.tokens(split), pieces.tokens(split))  # cutting changed no id
    assert len(re.findall(r"^tokenising train: \d+% \(\d+ s\)", out, re.M)) == 20 and "tokenising train: 100%" in out
    assert token_store.splits_safely(whole.tokenizer())


def test_tokenizers_that_might_tokenise_pieces_differently_are_tokenised_whole():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from transformer.data.token_store import splits_safely

    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "▁a": 1}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # a prefix "▁" at the start of every piece
    assert not splits_safely(BPETokenizer(tok))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.normalizer = normalizers.NFC()  # a normaliser sees the whole text
    assert not splits_safely(BPETokenizer(tok))
