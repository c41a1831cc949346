"""From a dataset config to tokenizers and padded id tensors for train, valid and test."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .batching import PaddedPairs
from .parallel import load_hub_pairs, read_pairs, split_off
from .synthetic import TASKS, make_synthetic_splits
from .tokenizers import SymbolTokenizer, train_tokenizer

log = logging.getLogger(__name__)

TOO_LONG = ("filter", "truncate")
TEXT_DATASETS = ("text_pairs", "opus_books")  # parallel text: local files, or a Hugging Face dataset
SPLITS = ("train", "valid", "test")


@dataclass
class Data:
    src_tokenizer: object
    tgt_tokenizer: object
    splits: dict  # split name -> PaddedPairs
    texts: dict  # split name -> [(source text, reference text)], row for row with splits, for BLEU and samples
    notes: dict = field(default_factory=dict)  # split name -> what was dropped or cut on the way
    dropped: dict = field(default_factory=dict)  # split name -> pairs the length filter dropped (too_long=filter)


def load_data(c, tokenizers=None, splits=SPLITS) -> Data:
    """Build the train/valid/test splits a dataset config describes, and the tokenizers (trained on the
    training split) unless `tokenizers` gives the (source, target) pair a checkpoint was trained with.

    With tokenizers given, `splits` may name fewer: eval asks for ("test",) alone, so that a test_file is all
    it reads (the training file may have moved since)."""
    if c.name in TASKS:
        return _synthetic(c)
    if c.name in TEXT_DATASETS:
        if tokenizers is None and "train" not in splits:
            raise ValueError("the tokenizers are trained on the train split: load it, or give the tokenizers")
        return _parallel_text(c, tokenizers, splits)
    raise UserError(f"dataset.name={c.name} is not one of: {', '.join(TASKS)}, text_pairs, opus_books")


def _synthetic(c) -> Data:
    sizes = {"train": c.num_train, "valid": c.num_valid, "test": c.num_test}
    pairs = make_synthetic_splits(c.name, c.vocab_size, c.min_len, c.max_len, sizes, c.seed)
    tokenizer = SymbolTokenizer(c.vocab_size)
    offset = tokenizer.vocab_size - c.vocab_size  # symbol s has id offset + s
    splits, texts = {}, {}
    for split, examples in pairs.items():
        ids = [([offset + s for s in src], [offset + s for s in tgt]) for src, tgt in examples]
        splits[split] = PaddedPairs(ids)
        texts[split] = [(tokenizer.decode(s), tokenizer.decode(t)) for s, t in ids]
    return Data(tokenizer, tokenizer, splits, texts)


def _parallel_text(c, tokenizers=None, wanted=SPLITS) -> Data:
    if c.too_long not in TOO_LONG:
        raise UserError(f"dataset.too_long={c.too_long} is not one of: {', '.join(TOO_LONG)}")
    for key in ("max_src_len", "max_tgt_len", "min_frequency"):
        if getattr(c, key) <= 0:
            raise UserError(f"dataset.{key}={getattr(c, key)} must be positive")
    raw = _read_splits(c, wanted)
    notes, dropped = {}, {}
    for split, pairs in raw.items():
        kept = [(s, t) for s, t in pairs if s and t]
        if len(kept) < len(pairs):
            notes[split] = [f"{len(pairs) - len(kept)} pairs with an empty side dropped"]
        raw[split] = kept
    if tokenizers is not None:
        src_tok, tgt_tok = tokenizers
    elif c.shared_vocab:
        src_tok = tgt_tok = train_tokenizer(c.tokenizer, [s for pair in raw["train"] for s in pair], c.vocab_size,
                                            c.min_frequency)
    else:
        src_tok = train_tokenizer(c.tokenizer, [s for s, _ in raw["train"]], c.vocab_size, c.min_frequency)
        tgt_tok = train_tokenizer(c.tokenizer, [t for _, t in raw["train"]], c.vocab_size, c.min_frequency)
    splits, texts = {}, {}
    for split, pairs in raw.items():
        ids, kept, long = [], [], 0
        for source, target in pairs:
            s, t = src_tok.encode(source), tgt_tok.encode(target)
            if len(s) > c.max_src_len or len(t) > c.max_tgt_len:
                long += 1
                if c.too_long == "filter":
                    continue
                s, t = s[: c.max_src_len], t[: c.max_tgt_len]
            if s and t:
                ids.append((s, t))
                kept.append((source, target))
        if long and c.too_long == "filter":
            dropped[split] = long
        if long:
            verb = "dropped" if c.too_long == "filter" else "truncated"
            notes.setdefault(split, []).append(f"{long} pairs longer than dataset.max_src_len={c.max_src_len} or "
                                               f"dataset.max_tgt_len={c.max_tgt_len} {verb}")
        if not ids:
            raise UserError(f"dataset: no {split} pairs are left after filtering (raise dataset.max_src_len or "
                            f"dataset.max_tgt_len, or set dataset.too_long=truncate)")
        splits[split], texts[split] = PaddedPairs(ids), kept
    for split, lines in notes.items():
        log.info(f"dataset {split}: " + "; ".join(lines))
    return Data(src_tok, tgt_tok, splits, texts, notes, dropped)


def _read_splits(c, wanted=SPLITS) -> dict:
    """The wanted splits' raw pairs. A held-out split is carved out of the training pairs (or the hub's) when its
    file is not given, so then the training pairs are read whatever is wanted."""
    if set(wanted) <= {"valid", "test"} and all(getattr(c, f"{split}_file") for split in wanted):
        return {split: read_pairs(getattr(c, f"{split}_file"), c.format, c.src_lang, c.tgt_lang,
                                  f"dataset.{split}_file") for split in wanted}
    if c.name == "opus_books" or c.hub_name:
        if not c.hub_name:
            raise UserError("dataset=opus_books needs dataset.hub_name (opus_books, or a folder saved with save_to_disk)")
        train = load_hub_pairs(c.hub_name, c.hub_config, c.src_lang, c.tgt_lang)
    else:
        if not c.train_file:
            raise UserError("dataset=text_pairs needs dataset.train_file=PATH (TSV, JSONL, or a Moses prefix)")
        if "train" not in wanted and not _exists(c.train_file, c.src_lang):
            held = [s for s in wanted if not getattr(c, f"{s}_file")]
            raise UserError(f"the {' and '.join(held)} pairs were held out of dataset.train_file={c.train_file} "
                            f"(dataset.{held[0]}_fraction), which is not there any more: give them with "
                            f"dataset.{held[0]}_file=PATH, or put the training file back")
        train = read_pairs(c.train_file, c.format, c.src_lang, c.tgt_lang, "dataset.train_file")
    given = {}
    for split in ("valid", "test"):
        path = getattr(c, f"{split}_file")
        if path and split in wanted:
            given[split] = read_pairs(path, c.format, c.src_lang, c.tgt_lang, f"dataset.{split}_file")
    total = len(train)
    for i, split in enumerate(("valid", "test")):
        if not getattr(c, f"{split}_file"):  # both fractions are of the whole file
            train, given[split] = split_off(train, getattr(c, f"{split}_fraction"), c.seed + i,
                                            f"dataset.{split}_fraction", total)
    return {split: pairs for split, pairs in {"train": train, **given}.items() if split in wanted}


def _exists(path, src_lang) -> bool:
    """A file, or the source side of a Moses pair of files."""
    return Path(path).is_file() or Path(f"{path}.{src_lang}").is_file()
