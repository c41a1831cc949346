import pytest

from playground.data import make_synthetic_splits
from playground.errors import UserError

SIZES = {"train": 2000, "valid": 200, "test": 300}


def test_splits_share_no_source_sequence():
    splits = make_synthetic_splits("reverse", 10, 1, 10, SIZES, seed=0)
    sources = {name: {tuple(src) for src, _ in pairs} for name, pairs in splits.items()}
    assert {name: len(s) for name, s in sources.items()} == SIZES  # distinct within each split too
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]


def test_the_same_seed_gives_the_same_splits_and_another_seed_does_not():
    assert make_synthetic_splits("copy", 10, 1, 10, SIZES, seed=3) == make_synthetic_splits("copy", 10, 1, 10, SIZES, 3)
    assert make_synthetic_splits("copy", 10, 1, 10, SIZES, seed=3) != make_synthetic_splits("copy", 10, 1, 10, SIZES, 4)


@pytest.mark.parametrize("task, rule", [("copy", list), ("reverse", lambda s: s[::-1]), ("sort", sorted)])
def test_each_task_maps_every_source_to_its_target(task, rule):
    pairs = make_synthetic_splits(task, 6, 1, 8, {"train": 200}, seed=0)["train"]
    assert all(tgt == list(rule(src)) for src, tgt in pairs)
    assert {len(src) for src, _ in pairs} == set(range(1, 9))


def test_asking_for_more_sequences_than_exist_is_refused():
    with pytest.raises(UserError, match="allow only 12"):
        make_synthetic_splits("reverse", 3, 1, 2, {"train": 10, "valid": 5, "test": 5}, seed=0)


def test_a_symbol_outside_the_tasks_alphabet_becomes_unk_not_an_id_past_the_vocabulary():
    from playground.data import UNK
    from playground.data.tokenizers import SymbolTokenizer

    tokenizer = SymbolTokenizer(10)  # symbols 0..9 after the 4 special ids: 14 ids in all
    assert tokenizer.encode("0 9 10 x") == [4, 13, UNK, UNK]
    assert max(tokenizer.encode("9 10")) < tokenizer.vocab_size


def test_a_symbol_that_is_a_digit_but_no_symbol_of_the_task_becomes_unk_rather_than_an_error():
    from playground.data import UNK
    from playground.data.tokenizers import SymbolTokenizer

    tokenizer = SymbolTokenizer(16)  # int() refuses "²" (a digit to str.isdigit) and a number of 5,000 digits
    assert tokenizer.encode("1 ² " + "9" * 5000 + " 15") == [5, UNK, UNK, 19]
