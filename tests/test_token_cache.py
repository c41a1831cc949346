"""The token cache: a text corpus tokenised once, memory-mapped by later runs, rebuilt when it must be."""

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from playground import experiment
from playground.config import DatasetConfig
from playground.data import BOS, EOS, PAD, load_data
from playground.data import cache
from playground.data.batching import TokenPairs, token_dtype
from playground.data.big_corpus import write_corpus
from playground.data.parallel import read_pairs
from playground.data.toy_corpus import make_pairs, write
from test_cli import ROOT
from test_reliability import losses


def config(folder, **changes):
    fields = dict(name="text_pairs", train_file=str(folder / "train.tsv"), test_file=str(folder / "test.tsv"),
                  tokenizer="bpe", vocab_size=300, min_frequency=1, valid_fraction=0.1)
    fields.update(changes)
    return DatasetConfig(**fields)


def cache_files(folder):
    return sorted((folder / cache.FOLDER).glob("*.tokens"))


def same_data(a, b):
    """Equal tokenizers, texts, notes, and every row of every split."""
    assert [t.to_dict() for t in (a.src_tokenizer, a.tgt_tokenizer)] == \
        [t.to_dict() for t in (b.src_tokenizer, b.tgt_tokenizer)]
    assert a.texts == b.texts and a.notes == b.notes and a.splits.keys() == b.splits.keys()
    for split in a.splits:
        rows = torch.arange(len(a.splits[split]))
        for x, y in zip(a.splits[split].batch(rows), b.splits[split].batch(rows)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_batch_is_padded_to_its_own_longest_row_with_bos_and_eos_around_each_target():
    pairs = TokenPairs.from_lists([([5, 6, 7], [8]), ([9], [10, 11, 12]), ([4] * 30, [4] * 30)], vocab_size=16)
    src, tgt = pairs.batch(torch.tensor([1, 0]))  # the long third pair is not in this batch: no padding for it
    assert src.tolist() == [[9, PAD, PAD], [5, 6, 7]]
    assert tgt.tolist() == [[BOS, 10, 11, 12, EOS], [BOS, 8, EOS, PAD, PAD]]
    assert pairs.lengths().tolist() == [3, 4, 31] and pairs.src.dtype == np.uint8


def test_the_second_load_maps_the_cache_and_gives_what_the_text_gives(text_corpus, caplog):
    caplog.set_level(logging.INFO)
    from_text = load_data(config(text_corpus, cache=False))
    assert not (text_corpus / cache.FOLDER).exists()
    first = load_data(config(text_corpus))
    assert "tokenised the corpus into" in caplog.text
    caplog.clear()
    second = load_data(config(text_corpus))
    assert "dataset cache: reading" in caplog.text and "tokenised" not in caplog.text
    same_data(from_text, first)
    same_data(from_text, second)
    assert isinstance(second.splits["train"].src.base, np.memmap)  # mapped, not read into memory
    assert second.splits["train"].src.dtype == token_dtype(second.src_tokenizer.vocab_size)
    assert [token_dtype(n) for n in (256, 257, 65536, 65537)] == [np.uint8, np.uint16, np.uint16, np.uint32]
    assert len(cache_files(text_corpus)) == 1
    # a resumed run or eval gives the tokenizers it was trained with: the cache built with them is read
    caplog.clear()
    alone = load_data(config(text_corpus), tokenizers=(second.src_tokenizer, second.tgt_tokenizer), splits=("test",))
    assert "dataset cache: reading" in caplog.text and len(cache_files(text_corpus)) == 1
    assert alone.texts["test"] == second.texts["test"]


def test_a_changed_data_file_or_tokenizer_setting_builds_a_new_cache(text_corpus, caplog):
    caplog.set_level(logging.INFO)
    before = load_data(config(text_corpus))
    with open(text_corpus / "train.tsv", "a", encoding="utf-8") as f:
        f.write("zebras quietly juggle\tle zebre giocolano piano\n")
    caplog.clear()
    after = load_data(config(text_corpus))
    assert "tokenised the corpus into" in caplog.text
    assert len(after.splits["train"]) + len(after.splits["valid"]) == \
        len(before.splits["train"]) + len(before.splits["valid"]) + 1
    caplog.clear()
    word = load_data(config(text_corpus, tokenizer="word"))
    assert "tokenised the corpus into" in caplog.text and word.src_tokenizer.kind == "word"
    assert len(cache_files(text_corpus)) == 3


def test_a_file_given_as_the_valid_split_or_as_the_test_split_makes_two_caches(text_corpus):
    write(make_pairs(30, seed=9), text_corpus / "other.tsv", "tsv")
    as_valid = load_data(config(text_corpus, valid_file=str(text_corpus / "other.tsv"), test_file=None,
                                test_fraction=0.1))
    as_test = load_data(config(text_corpus, test_file=str(text_corpus / "other.tsv")))
    assert as_valid.texts["valid"] == as_test.texts["test"] and as_valid.texts["test"] != as_test.texts["test"]
    assert len(cache_files(text_corpus)) == 2


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:-100]), "is truncated"),
    (lambda path: path.write_bytes(path.read_bytes()[:10]), "is truncated"),
    (lambda path: path.write_bytes(b"\xff" * 64), "is not a token cache"),
    (lambda path: path.write_bytes(path.read_bytes()[:-200] + b"\x07" + path.read_bytes()[-199:]), "is corrupt"),
    (lambda path: path.write_bytes(path.read_bytes().replace(b"<unk>", b"<unq>", 1)), "is corrupt"),
    (lambda path: path.write_bytes(path.read_bytes().replace(b'"sha256"', b'"sha257"', 1)), "is corrupt"),
], ids=["truncated", "cut short", "overwritten", "a changed byte", "a changed tokenizer in the header",
        "a changed checksum key in the header"])
def test_a_truncated_or_corrupt_cache_is_named_and_rebuilt(text_corpus, caplog, damage, message):
    caplog.set_level(logging.INFO)
    load_data(config(text_corpus))  # let go before the damage: a file cut short under a live mapping kills its reader
    path, = cache_files(text_corpus)
    damage(path)
    caplog.clear()
    rebuilt = load_data(config(text_corpus))
    assert f"dataset cache: {path} {message}" in caplog.text and "rebuilding it" in caplog.text
    same_data(load_data(config(text_corpus, cache=False)), rebuilt)
    assert cache.read(path)  # whole again


def test_another_tokenizers_version_tokenises_anew_and_never_reads_the_old_cache(text_corpus, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(cache, "library_version", lambda: "0.0.1")
    load_data(config(text_corpus))
    old, = cache_files(text_corpus)
    monkeypatch.undo()
    caplog.clear()
    again = load_data(config(text_corpus))
    assert "tokenised the corpus into" in caplog.text  # the version is part of the key: a new file, the old kept
    assert len(cache_files(text_corpus)) == 2  # for the environment that still has the other version
    same_data(load_data(config(text_corpus, cache=False)), again)
    with pytest.raises(cache.Unusable, match=rf"was written by another version \(cache format {cache.FORMAT}, "
                                             rf"tokenizers 0.0.1; now {cache.FORMAT} and"):
        cache.read(old)  # and were it found under the new name, its header would refuse it


def test_two_processes_building_the_same_cache_at_once_end_with_one_valid_cache(tmp_path):
    write(make_pairs(6000, seed=4), tmp_path / "train.tsv", "tsv")
    code = textwrap.dedent(f"""
        import logging, sys, hashlib
        sys.path.insert(0, {str(ROOT)!r})
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from playground.config import DatasetConfig
        from playground.data import load_data
        data = load_data(DatasetConfig(name="text_pairs", train_file={str(tmp_path / "train.tsv")!r},
                                       tokenizer="bpe", vocab_size=400))
        train = data.splits["train"]
        print("digest", hashlib.sha256(train.src.tobytes() + train.tgt.tobytes()).hexdigest())
    """)
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert sum("tokenised the corpus into" in out for out in outputs) == 1, outputs  # the other waited, then read
    digests = {line for out in outputs for line in out.splitlines() if line.startswith("digest")}
    assert len(digests) == 1
    assert len(cache_files(tmp_path)) == 1 and not list((tmp_path / cache.FOLDER).glob("*.tmp"))


def test_a_resumed_run_on_cached_text_continues_with_exactly_the_losses_of_the_uninterrupted_run(
        compose_config, text_corpus):
    common = ["dataset=text_pairs", f"dataset.train_file={text_corpus}/train.tsv",
              f"dataset.test_file={text_corpus}/test.tsv",
              "dataset.tokenizer=word", "dataset.vocab_size=300", "model.d_model=16", "model.d_ff=32",
              "model.heads=2", "model.enc_layers=1", "model.dec_layers=1", "model.dropout=0.1",
              "trainer.max_tokens=200", "scheduler=noam", "scheduler.warmup_steps=4", "trainer.log_every=1",
              "trainer.eval_every=8"]
    experiment.run_train(compose_config(*common, "trainer.max_steps=12"), text_corpus / "whole")
    experiment.run_train(compose_config(*common, "trainer.max_steps=8"), text_corpus / "first")
    experiment.run_train(compose_config(*common, "trainer.max_steps=12",
                                        f"ckpt_path={text_corpus}/first/checkpoints/last.pt"), text_corpus / "resumed")
    expected, got = losses(text_corpus / "whole"), losses(text_corpus / "resumed")
    assert sorted(got) == list(range(9, 13))
    assert [got[s] for s in range(9, 13)] == [expected[s] for s in range(9, 13)]  # bit for bit
    assert len(cache_files(text_corpus)) == 1  # three runs, one tokenisation


def test_dataset_cache_dir_chooses_the_folder_and_cache_false_writes_none(text_corpus, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    load_data(config(text_corpus, cache_dir=str(elsewhere / "tokens")))
    assert len(list((elsewhere / "tokens").glob("*.tokens"))) == 1 and not (text_corpus / cache.FOLDER).exists()
    load_data(config(text_corpus, cache=False))
    assert not (text_corpus / cache.FOLDER).exists()


def test_the_measuring_corpus_has_the_sentence_lengths_it_claims(tmp_path):
    paths = write_corpus(tmp_path, 3000, held_out=50)
    pairs = read_pairs(paths["train"], "auto", "en", "it", "dataset.train_file")
    lengths = np.array([len(source.split()) for source, _ in pairs])
    assert len(pairs) == 3000 and len(read_pairs(paths["test"], "auto", "en", "it", "dataset.test_file")) == 50
    assert 21 < lengths.mean() < 25 and 18 <= np.median(lengths) <= 22 and lengths.max() <= 150
    ratio = np.array([len(target.split()) for _, target in pairs]) / lengths
    assert 0.9 < ratio.mean() < 1.1 and ratio.std() > 0.01  # targets spread around the source lengths


@pytest.mark.parametrize("args, message", [
    (["--pairs", "0"], "--pairs 0: give 1 or more"),  # an empty train.tsv
    (["--pairs", "-3"], "--pairs -3: give 1 or more"),  # a StopIteration traceback, test.tsv short of 3 pairs
    (["--held-out", "0"], "--held-out 0: give 1 or more"),  # empty valid.tsv and test.tsv
    (["--vocabulary", "0"], "--vocabulary 0: give 1 to"),  # a ValueError traceback from numpy
    (["--median-words", "-1"], "--median-words -1.0: give a positive number"),  # sentences of no words
    (["--pairs", "10", "a file"], "is a file: give a folder")])
def test_the_measuring_corpus_command_refuses_a_count_it_cannot_write_or_a_file_as_its_folder(tmp_path, capsys, args,
                                                                                             message):
    from playground.data.big_corpus import main

    folder = tmp_path / "big"
    if "a file" in args:
        folder.write_text("mine\n")
        args = args[:-1]
    with pytest.raises(SystemExit) as stopped:
        main([str(folder), "--vocabulary", "50", *args])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not folder.is_dir()


def test_a_cache_that_cannot_be_written_leaves_the_run_going_with_the_ids_in_memory(text_corpus, caplog, monkeypatch):
    def full_disk(path, arrays, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "write", full_disk)
    data = load_data(config(text_corpus))
    assert "cannot be written (No space left on device); going on without a cache" in caplog.text
    same_data(load_data(config(text_corpus, cache=False)), data)


def test_a_cache_dir_that_cannot_be_written_is_refused_and_an_unwritable_default_gives_way_to_the_user_cache(
        text_corpus, tmp_path_factory, monkeypatch):
    import os

    from playground.errors import UserError

    readonly = tmp_path_factory.mktemp("readonly")
    home = tmp_path_factory.mktemp("home")
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: writable(path, mode) and readonly.name not in str(path)
                        and cache.FOLDER not in str(path))  # as for a user without write permission there
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    with pytest.raises(UserError, match=rf"^dataset.cache_dir={readonly} is not writable"):
        load_data(config(text_corpus, cache_dir=str(readonly)))
    load_data(config(text_corpus))
    assert len(list((home / "transformer-playground").glob("*.tokens"))) == 1
