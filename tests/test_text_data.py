"""Parallel text: reading files, tokenizers, batching by tokens, and training to a real BLEU score."""

import json
import os
import subprocess
import sys

import pytest
import sacrebleu
import torch

from playground import experiment, inference
from playground.data import load_data
from playground.data.batching import TokenPairs, token_budget_batches
from playground.data.parallel import read_pairs, split_off
from playground.data.tokenizers import tokenizer_from_dict, train_tokenizer
from playground.data.toy_corpus import make_pairs, write
from playground.errors import UserError
from playground.evaluate import text_metrics
from playground.config import DatasetConfig
from playground.data import BOS, EOS, PAD, UNK
from test_cli import ENTRY, ROOT

BAD_FILES = [
    ("notab.tsv", b"hello\tciao\nno tab here\n", 'line 2: expected "source<TAB>target", found no TAB'),
    ("columns.tsv", b"hello\tciao\nsee you\tci vediamo\t0.93\n", 'line 2: expected "source<TAB>target", found 2 TABs'),
    ("bytes.tsv", b"a\tb\n\xff\xfe\tc\n", "line 2: not UTF-8 text (byte 0xff at column 1)"),
    ("bad.jsonl", b'{"src": "a", "tgt": "b"}\n{not json}\n', "line 2: not JSON"),
    ("keys.jsonl", b'{"src": "a", "tgt": "b"}\n{"source": "a"}\n', 'line 2: expected {"src": ..., "tgt": ...}'),
    ("surrogate.jsonl", b'{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": "b \\ud83d"}\n',
     'line 2: the target holds "\\ud83d" without the other half of its UTF-16 surrogate pair'),
    ("empty.tsv", b"", "the file holds no sentence pairs"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_broken_data_file_is_refused_naming_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{path}.*{message[:40]}".replace("\\", "\\\\").replace("(", r"\(")
                       .replace(")", r"\)").replace("{", r"\{").replace("}", r"\}").replace("[", r"\[")):
        read_pairs(path, "auto", "en", "it", "dataset.train_file")


def test_a_missing_file_a_folder_and_unequal_moses_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="dataset.valid_file=.*nope.tsv: no such file"):
        read_pairs(tmp_path / "nope.tsv", "auto", "en", "it", "dataset.valid_file")
    (tmp_path / "corpus").mkdir()
    with pytest.raises(UserError, match=r"dataset.train_file=.*corpus is a folder: give a file \(TSV, JSONL, or a "):
        read_pairs(tmp_path / "corpus", "tsv", "en", "it", "dataset.train_file")
    (tmp_path / "m.en").write_text("a\nb\n")
    (tmp_path / "m.it").write_text("x\n")
    with pytest.raises(UserError, match="m.en has 2 lines but .*m.it has 1"):
        read_pairs(tmp_path / "m", "auto", "en", "it", "dataset.train_file")


@pytest.mark.parametrize("name", ["p.tsv", "p.jsonl", "p.en"])
def test_a_byte_order_mark_at_the_start_of_a_file_is_no_part_of_its_first_pair(tmp_path, name):
    pairs = make_pairs(5)
    write(pairs, tmp_path / "p.tsv", "tsv")
    write(pairs, tmp_path / "p.jsonl", "jsonl")
    (tmp_path / "p.en").write_text("".join(f"{en}\n" for en, _ in pairs))
    (tmp_path / "p.it").write_text("".join(f"{it}\n" for _, it in pairs))
    for path in tmp_path.iterdir():  # as an editor that saves "UTF-8 with BOM" writes them
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_pairs(tmp_path / name.replace(".en", ""), "auto", "en", "it", "dataset.train_file") == pairs


def test_tsv_jsonl_and_moses_files_give_the_same_pairs(tmp_path):
    pairs = make_pairs(20)
    write(pairs, tmp_path / "p.tsv", "tsv")
    write(pairs, tmp_path / "p.jsonl", "jsonl")
    (tmp_path / "p.en").write_text("".join(f"{en}\n" for en, _ in pairs))
    (tmp_path / "p.it").write_text("".join(f"{it}\n" for _, it in pairs))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"src": en, "tgt": it}) + "\n" for en, it in pairs))
    for name in ("p.tsv", "p.jsonl", "p", "q.jsonl"):
        assert read_pairs(tmp_path / name, "auto", "en", "it", "dataset.train_file") == pairs


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_every_tokenizer_keeps_the_special_ids_and_survives_a_checkpoint(kind):
    texts = [en for en, _ in make_pairs(300)]
    tokenizer = train_tokenizer(kind, texts, vocab_size=200, min_frequency=1)
    assert [tokenizer.piece(i) for i in (PAD, BOS, EOS, UNK)] == ["<pad>", "<s>", "</s>", "<unk>"]
    ids = tokenizer.encode(texts[0])
    assert ids and min(ids) > UNK
    assert tokenizer.decode(ids + [EOS, ids[0]]) == texts[0]  # decoding stops at EOS
    restored = tokenizer_from_dict(tokenizer.to_dict())
    assert restored.encode(texts[1]) == tokenizer.encode(texts[1]) and restored.vocab_size == tokenizer.vocab_size


PUNCTUATED = ["L'uomo disse: «Non è così!»", "Dell'acqua, per favore.", "Ho 3.5 euro e 12,50 dollari.",
              "È l'una e mezza - no, le due.", "C'era una volta un re...", "Perché? Non lo so; forse sì.",
              "Il ben-noto scrittore (1850-1920) morì.", '"Vieni qui", disse lei.']


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_a_perfect_translation_decodes_to_its_reference_as_written_and_scores_bleu_100(kind):
    # the text metrics compare the decoded output with the reference text as written: a tokenizer that decoded
    # "l'uomo" as "l ' uomo" would cost a perfect model 40 BLEU and give it a WER above 1
    tokenizer = train_tokenizer(kind, PUNCTUATED, vocab_size=500, min_frequency=1)
    hypotheses = [tokenizer.decode(tokenizer.encode(text)) for text in PUNCTUATED]
    assert hypotheses == PUNCTUATED
    assert text_metrics(hypotheses, PUNCTUATED) == pytest.approx({"bleu": 100, "chrf": 100, "cer": 0, "wer": 0})


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_special_tokens_written_in_the_text_are_text_and_never_special_ids(kind):
    texts = ["il prezzo era <s>10</s> 8 euro", "scrivi </s> alla fine", "usa <pad> e <unk> nel codice"]
    tokenizer = train_tokenizer(kind, texts * 3, vocab_size=300, min_frequency=1)
    for restored in (tokenizer, tokenizer_from_dict(tokenizer.to_dict())):
        for text in texts:
            ids = restored.encode(text)
            assert min(ids) > UNK and restored.decode(ids) == text, [restored.piece(i) for i in ids]
    assert min(min(ids) for ids in tokenizer.encode_batch(texts)) > UNK


def test_held_out_splits_are_disjoint_and_seeded_and_long_pairs_are_filtered_or_cut(tmp_path):
    write(make_pairs(400), tmp_path / "all.tsv", "tsv")
    c = DatasetConfig(name="text_pairs", train_file=str(tmp_path / "all.tsv"), tokenizer="word", vocab_size=500,
                      min_frequency=1, valid_fraction=0.1, test_fraction=0.1)
    data = load_data(c)
    assert {split: len(pairs) for split, pairs in data.splits.items()} == {"train": 320, "valid": 40, "test": 40}
    train = data.splits["train"]
    train_sources = {tuple(row[row != PAD].tolist()) for row in train.batch(torch.arange(len(train)))[0]}
    for split in ("valid", "test"):
        held_out = {tuple(data.src_tokenizer.encode(source)) for source, _ in data.texts[split]}
        assert len(held_out) == 40 and not held_out & train_sources
    assert load_data(c).texts == data.texts
    c.max_src_len = 6  # most sentences have 5 to 9 words
    filtered = load_data(c)
    lengths = data.splits["train"].src_lengths  # unfiltered: source tokens (no BOS or EOS)
    assert len(filtered.splits["train"]) == int((lengths <= 6).sum()) < 320  # a pair of exactly 6 is kept
    assert int(filtered.splits["train"].src_lengths.max()) == 6
    assert "longer than dataset.max_src_len=6" in filtered.notes["train"][-1]
    c.too_long = "truncate"
    truncated = load_data(c)
    assert len(truncated.splits["train"]) == 320 and int(truncated.splits["train"].src_lengths.max()) == 6
    c.max_src_len, c.max_tgt_len = 50, 3  # every target (4 words or more) is cut to exactly its limit too
    cut = load_data(c).splits["train"]
    assert len(cut) == 320 and set((cut.tgt_lengths - 2).tolist()) == {3}  # tgt_lengths count BOS and EOS


def test_a_split_left_empty_says_why_naming_its_file(tmp_path):
    (tmp_path / "sourceless.tsv").write_text("".join(f"\tciao {i}\n" for i in range(30)))
    write(make_pairs(60), tmp_path / "all.tsv", "tsv")
    c = DatasetConfig(name="text_pairs", train_file=str(tmp_path / "sourceless.tsv"), tokenizer="word",
                      min_frequency=1, cache=False, valid_fraction=0.1, test_fraction=0.1)
    with pytest.raises(UserError, match=f"^dataset.train_file={tmp_path / 'sourceless.tsv'}: no train pairs are left "
                                        r"\(24 pairs with an empty side dropped\)$"):
        load_data(c)
    c.train_file, c.max_src_len = str(tmp_path / "all.tsv"), 2  # every sentence has more than 2 words
    with pytest.raises(UserError, match=f"^dataset.train_file={tmp_path / 'all.tsv'}: no train pairs are left "
                                        r"\(48 pairs longer than dataset.max_src_len=2 or dataset.max_tgt_len=\d+ "
                                        r"dropped\) \(raise dataset.max_src_len"):
        load_data(c)


@pytest.mark.parametrize("cache", [False, True])
def test_the_test_pairs_scored_and_dropped_add_up_to_the_pairs_of_the_test_file(tmp_path, cache):
    write(make_pairs(200), tmp_path / "train.tsv", "tsv")
    test = make_pairs(20, seed=9)
    (tmp_path / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in test) + "hello\t\n\tciao\n"
                                       + " ".join(["the"] * 30) + "\til\n")  # two empty sides, one too long
    c = DatasetConfig(name="text_pairs", train_file=str(tmp_path / "train.tsv"), test_file=str(tmp_path / "test.tsv"),
                      tokenizer="word", min_frequency=1, max_src_len=20, cache=cache)
    for data in (load_data(c), load_data(c)):  # with the cache: built, then read
        counts = experiment._test_counts(data)
        assert counts == {"test/pairs_scored": 20, "test/pairs_dropped": 3}
    c.too_long = "truncate"  # the long pair is scored, cut; the empty sides still cannot be
    assert experiment._test_counts(load_data(c)) == {"test/pairs_scored": 21, "test/pairs_dropped": 2}


def test_token_budget_batches_cover_every_pair_once_and_pad_less_than_random_batches():
    g = torch.Generator().manual_seed(0)
    pairs = [([5] * n, [6] * n) for n in torch.randint(1, 40, (500,), generator=g).tolist()]
    data = TokenPairs.from_lists(pairs)
    batches = token_budget_batches(data.lengths(), max_tokens=200, generator=g)
    assert sorted(torch.cat(batches).tolist()) == list(range(500))
    assert all(len(b) * int(data.lengths()[b].max()) <= 200 for b in batches)

    def padding(batch_list):
        real = sum(int(data.src_lengths[b].sum()) for b in batch_list)
        return 1 - real / sum(len(b) * int(data.src_lengths[b].max()) for b in batch_list)

    assert padding(batches) < 0.1 < padding(list(torch.randperm(500, generator=g).split(len(batches[0]))))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    pairs = make_pairs(1700, seed=1)
    write(pairs[:1500], folder / "train.tsv", "tsv")
    write(pairs[1500:1600], folder / "valid.tsv", "tsv")
    write(pairs[1600:], folder / "test.tsv", "tsv")
    return folder, pairs[1600:]


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_training_on_a_rule_based_corpus_reaches_a_bleu_above_50_and_translates_from_anywhere(toy, tokenizer,
                                                                                             compose_config, tmp_path,
                                                                                             monkeypatch, capsys):
    folder, test_pairs = toy
    # trained in this process, as the command calls run_train (a new process would add seconds of start-up)
    experiment.run_train(compose_config(
        "dataset=text_pairs", f"dataset.train_file={folder}/train.tsv", f"dataset.valid_file={folder}/valid.tsv",
        f"dataset.test_file={folder}/test.tsv", f"dataset.tokenizer={tokenizer}", "dataset.vocab_size=400",
        "trainer.max_steps=70", "trainer.eval_every=70", "trainer.max_tokens=1200"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/bleu"] > 50, metrics
    assert {"test/chrf", "test/cer", "test/wer", "valid/bleu"} <= set(metrics)
    if tokenizer == "bpe":
        return  # eval and translate read the tokenizer from the checkpoint the same way for both
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the checkpoint alone is enough (eval elsewhere: test_nmt_training.py)
    english, italian = test_pairs[0]
    capsys.readouterr()
    inference.run_translate(compose_config("mode=translate", f"ckpt_path={tmp_path}/run/checkpoints/best.pt",
                                           f"text={english}"))
    translated = capsys.readouterr().out.strip()
    # the run's own test exact match is 0.88-0.99 after 70 steps (BLEU 94-99.5, fp32 and bf16): ask for a close
    # translation, not a perfect one
    assert sacrebleu.sentence_chrf(translated, [italian]).score > 60, (translated, italian)


def test_the_hub_code_path_trains_from_a_dataset_saved_to_disk(compose_config, tmp_path):
    datasets = pytest.importorskip("datasets")
    pairs = make_pairs(300)
    datasets.Dataset.from_dict({"id": [str(i) for i in range(300)],
                                "translation": [{"en": en, "it": it} for en, it in pairs]}).save_to_disk(tmp_path / "hub")
    experiment.run_train(compose_config(
        "dataset=opus_books", f"dataset.hub_name={tmp_path}/hub", "dataset.valid_fraction=0.1",
        "dataset.test_fraction=0.1", "dataset.vocab_size=200", "model.d_model=32", "model.d_ff=64",
        "trainer.max_steps=10", "trainer.eval_every=10"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test/bleu"] <= 100 and metrics["test/wer"] >= 0


def test_the_hubs_own_loading_code_reads_a_local_copy_of_a_hub_dataset_offline(compose_config, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    # the layout of opus_books on the hub (and of `hf download --repo-type dataset opus_books`): a README whose
    # metadata names each language pair's files, and Parquet files; read by load_dataset, the call that downloads
    pairs = make_pairs(100)
    (tmp_path / "opus_books" / "en-it").mkdir(parents=True)
    datasets.Dataset.from_dict({"id": [str(i) for i in range(100)],
                                "translation": [{"en": en, "it": it} for en, it in pairs]}).to_parquet(
        tmp_path / "opus_books" / "en-it" / "train-00000-of-00001.parquet")
    (tmp_path / "opus_books" / "README.md").write_text(
        "---\nconfigs:\n- config_name: en-it\n  data_files:\n  - split: train\n    path: en-it/train-*\n---\n")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)  # no network: anything it asks the hub for fails
    data = load_data(compose_config("dataset=opus_books", f"dataset.hub_name={tmp_path}/opus_books",
                                    "dataset.valid_fraction=0.1", "dataset.test_fraction=0.1",
                                    "dataset.vocab_size=200").dataset)
    assert {split: len(data.splits[split]) for split in ("train", "valid", "test")} == {"train": 80, "valid": 10,
                                                                                       "test": 10}
    assert set(data.texts["test"]) <= set(pairs)
    with pytest.raises(UserError, match=rf"^dataset.hub_name={tmp_path}/opus_books \(en-fr\) could not be read: "
                                        r"BuilderConfig 'en-fr' not found. Available: \['en-it'\] \(a folder is read "):
        load_data(compose_config("dataset=opus_books", f"dataset.hub_name={tmp_path}/opus_books",
                                 "dataset.tgt_lang=fr").dataset)


def test_a_saved_hub_dataset_without_a_train_split_is_refused_naming_the_splits_it_has(tmp_path):
    datasets = pytest.importorskip("datasets")
    from playground.data.parallel import load_hub_pairs

    test = datasets.Dataset.from_dict({"translation": [{"en": "a b", "it": "c d"}] * 4})
    datasets.DatasetDict({"validation": test, "test": test}).save_to_disk(tmp_path / "hub")
    with pytest.raises(UserError, match=rf"^dataset.hub_name={tmp_path}/hub has no train split to train on \(its "
                                        r"splits: validation, test\)$"):
        load_hub_pairs(str(tmp_path / "hub"), None, "en", "it")


def test_without_a_network_the_hub_dataset_fails_with_one_clear_message(tmp_path):
    pytest.importorskip("datasets")  # without it the message names the missing package instead
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, ENTRY, "dataset=opus_books", f"hydra.run.dir={tmp_path}/run"], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: dataset.hub_name=opus_books (en-it) could not be loaded from the Hugging")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_hub_is_named_at_once_and_the_libraries_are_left_online(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import socket

    from playground.data import parallel

    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache

    def no_network(address, timeout=None):
        assert address == ("huggingface.co", 443) and timeout <= 5
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(parallel.socket, "create_connection", no_network)
    import huggingface_hub

    monkeypatch.setattr(parallel.urllib.request, "getproxies", lambda: {})  # no proxy on this test's machine
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    with pytest.raises(UserError, match=r"^dataset.hub_name=opus_books \(en-it\) could not be loaded from the Hugging "
                                        r"Face hub: the hub cannot be reached \(huggingface.co: Name or service not "
                                        r"known\) and no copy is in the local cache"):
        parallel.load_hub_pairs("opus_books", None, "en", "it")
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before


def test_a_corpus_smaller_than_a_batch_is_refused_and_leaves_its_run_directory_free(compose_config, tmp_path):
    from playground.rundir import run_file_in

    (tmp_path / "tiny.tsv").write_text("".join(f"w{i} x\tv{i} y\n" for i in range(9)))  # 7 to train, 1 valid, 1 test
    data = ["dataset=text_pairs", f"dataset.train_file={tmp_path / 'tiny.tsv'}", "dataset.tokenizer=char"]
    with pytest.raises(UserError, match="trainer.batch_size=64 is more than the 7 training examples"):
        experiment.run_train(compose_config(*data), tmp_path / "r")
    assert run_file_in(tmp_path / "r") is None  # the corrected command may use the same hydra.run.dir
    # batches by tokens leave batch_size unchecked: the model summary's probe takes the 7 pairs there are, not 8
    experiment.run_train(compose_config(*data, "trainer.max_tokens=40", "trainer.max_steps=2", "trainer.eval_every=2"),
                         tmp_path / "r")
    assert (tmp_path / "r" / "metrics.json").is_file()


def test_held_out_fractions_that_leave_nothing_to_train_on_are_refused_with_the_counts():
    rest, _ = split_off(list(range(6000)), 0.9, 0, "dataset.valid_fraction")
    with pytest.raises(UserError, match=r"^dataset.test_fraction=0.2 of 6000 pairs is 1200, and 600 are left: none "
                                        r"would remain to train on"):
        split_off(rest, 0.2, 0, "dataset.test_fraction", total=6000)


def test_one_shared_vocabulary_is_learned_from_both_sides(tmp_path):
    write(make_pairs(200), tmp_path / "all.tsv", "tsv")
    c = DatasetConfig(name="text_pairs", train_file=str(tmp_path / "all.tsv"), tokenizer="word", vocab_size=2000,
                      min_frequency=1, shared_vocab=True, cache=False)
    data = load_data(c)
    assert data.src_tokenizer is data.tgt_tokenizer
    train = data.splits["train"]
    assert UNK not in train.src.tolist() and UNK not in train.tgt.tolist()  # every word of either side is known


@pytest.mark.parametrize("pairs, a_file, message", [
    ("-5", False, "--pairs -5: give 1 to 53160 (the toy grammar has 53760 distinct sentences"),  # test pairs in train
    ("60000", False, "--pairs 60000: give 1 to 53160"),  # drew sentences for ever
    ("10", True, "is a file: give a folder")])
def test_the_toy_corpus_command_refuses_a_count_it_cannot_write_or_a_file_as_its_folder(tmp_path, capsys, pairs, a_file,
                                                                                       message):
    from playground.data.toy_corpus import main

    folder = tmp_path / "toy"
    if a_file:
        folder.write_text("mine\n")
    with pytest.raises(SystemExit) as stopped:
        main([str(folder), "--pairs", pairs])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not folder.is_dir()
