"""From a dataset config to tokenizers and the token ids of train, valid and test (TokenPairs)."""

import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import cache
from .batching import TokenPairs, concatenate, flatten, flatten_bytes, token_dtype
from .cache import cache_folder, corpus_key
from .parallel import detect_format, load_hub_pairs, read_pairs, split_off
from .synthetic import TASKS, make_synthetic_splits
from .tokenizers import SymbolTokenizer, tokenizer_from_dict, train_tokenizer

log = logging.getLogger(__name__)

TOO_LONG = ("filter", "truncate")
TEXT_DATASETS = ("text_pairs", "opus_books")  # parallel text: local files, or a Hugging Face dataset
SPLITS = ("train", "valid", "test")
HELD_OUT = ("valid", "test")  # the splits whose text is kept, for BLEU and samples


@dataclass
class Data:
    src_tokenizer: object
    tgt_tokenizer: object
    splits: dict  # split name -> TokenPairs
    texts: dict  # valid and test -> [(source text, reference text)], row for row with splits, for BLEU and samples
    notes: dict = field(default_factory=dict)  # split name -> what was dropped or cut on the way
    dropped: dict = field(default_factory=dict)  # split name -> pairs read but not kept (an empty side; too long)


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
        splits[split] = TokenPairs.from_lists(ids, tokenizer.vocab_size)
        if split in HELD_OUT:
            texts[split] = [(tokenizer.decode(s), tokenizer.decode(t)) for s, t in ids]
    return Data(tokenizer, tokenizer, splits, texts)


def _parallel_text(c, tokenizers=None, wanted=SPLITS) -> Data:
    """Text pairs as token ids: from the token cache (data/cache.py) for local files, tokenised here otherwise."""
    if c.too_long not in TOO_LONG:
        raise UserError(f"dataset.too_long={c.too_long} is not one of: {', '.join(TOO_LONG)}")
    for key in ("max_src_len", "max_tgt_len", "min_frequency"):
        if getattr(c, key) <= 0:
            raise UserError(f"dataset.{key}={getattr(c, key)} must be positive")
    files = _data_files(c)
    found = _cached(c, files, tokenizers, wanted) if c.cache and files else None
    arrays, meta = found or _tokenised(c, tokenizers, wanted)
    for split, lines in meta["notes"].items():
        if split in wanted:
            log.info(f"dataset {split}: " + "; ".join(lines))
    if tokenizers is None:
        src_tok = tokenizer_from_dict(meta["tokenizers"][0])
        tgt_tok = src_tok if c.shared_vocab else tokenizer_from_dict(meta["tokenizers"][1])
        tokenizers = src_tok, tgt_tok
    splits = {split: TokenPairs(*(arrays[f"{split}.{name}"] for name in ("src", "src_offsets", "tgt", "tgt_offsets")))
              for split in wanted}
    texts = {split: list(zip(_strings(arrays, f"{split}.src_text"), _strings(arrays, f"{split}.tgt_text")))
             for split in wanted if split in HELD_OUT}
    return Data(*tokenizers, splits, texts, {k: v for k, v in meta["notes"].items() if k in wanted},
                {k: v for k, v in meta["dropped"].items() if k in wanted})


def _data_files(c) -> dict:
    """The files a text_pairs corpus reads, by role ({"train_file": [path], ...}; a Moses prefix: both of its
    files), when they are all there; else {}: a hub dataset, or eval after the training file has moved, is
    tokenised without the cache."""
    if c.name != "text_pairs" or not c.train_file or c.hub_name:
        return {}
    files = {}
    for role in ("train_file", "valid_file", "test_file"):
        path = getattr(c, role)
        if path:
            fmt = detect_format(path, c.src_lang) if c.format == "auto" else c.format
            files[role] = [f"{path}.{c.src_lang}", f"{path}.{c.tgt_lang}"] if fmt == "moses" else [path]
    return files if all(Path(f).is_file() for paths in files.values() for f in paths) else {}


def _cached(c, files, tokenizers, wanted):
    """(arrays, meta) from the token cache, built first if need be; None when there is no folder to keep it in,
    or when eval's test split is better read alone than the whole corpus tokenised for it."""
    train = files["train_file"][0]
    folder = cache_folder(c.cache_dir, train)
    if folder is None:
        return None
    own = folder / f"{Path(train).name}-{corpus_key(c, files)}.tokens"  # tokenizers trained on this corpus
    if tokenizers is None:
        return _logged(own, lambda: _tokenised(c, None, SPLITS))
    found = cache.load(own)  # a resumed run, or eval, with the tokenizers this cache was built with: use it
    if found is not None and [tokenizer_from_dict(d).to_dict() for d in found[1]["tokenizers"]] == \
            [t.to_dict() for t in tokenizers]:
        log.info(f"dataset cache: reading {own} ({own.stat().st_size / 1e6:,.1f} MB)")
        return found
    given = folder / f"{Path(train).name}-{corpus_key(c, files, tokenizers)}.tokens"
    if "train" in wanted or given.exists():
        return _logged(given, lambda: _tokenised(c, tokenizers, SPLITS))
    return None


def _logged(path, build):
    """cache.load_or_build, saying which."""
    started, built = time.perf_counter(), []
    arrays, meta = cache.load_or_build(path, lambda: built.append(True) or build())
    if path.exists():
        log.info(f"dataset cache: {'tokenised the corpus into' if built else 'reading'} {path} "
                 f"({path.stat().st_size / 1e6:,.1f} MB, {time.perf_counter() - started:.1f} s)")
    return arrays, meta


def _tokenised(c, tokenizers, wanted) -> tuple[dict, dict]:
    """Read the wanted splits, train the tokenizers unless given, and tokenise: (arrays, meta) as the cache holds
    them (each split's ids and offsets; the held-out splits' text; the tokenizers, notes and drop counts)."""
    raw = _read_splits(c, wanted)
    notes, dropped = {}, {}
    for split, pairs in raw.items():
        kept = [(s, t) for s, t in pairs if s and t]
        if len(kept) < len(pairs):
            notes[split] = [f"{len(pairs) - len(kept)} pairs with an empty side dropped"]
            dropped[split] = len(pairs) - len(kept)
        raw[split] = kept
    if tokenizers is not None:
        src_tok, tgt_tok = tokenizers
    elif c.shared_vocab:
        src_tok = tgt_tok = train_tokenizer(c.tokenizer, [s for pair in raw["train"] for s in pair], c.vocab_size,
                                            c.min_frequency)
    else:
        src_tok = train_tokenizer(c.tokenizer, [s for s, _ in raw["train"]], c.vocab_size, c.min_frequency)
        tgt_tok = train_tokenizer(c.tokenizer, [t for _, t in raw["train"]], c.vocab_size, c.min_frequency)
    arrays = {}
    for split, pairs in raw.items():
        ids, kept, long = _encode(pairs, src_tok, tgt_tok, c)
        if long and c.too_long == "filter":
            dropped[split] = dropped.get(split, 0) + long
        if long:
            verb = "dropped" if c.too_long == "filter" else "truncated"
            notes.setdefault(split, []).append(f"{long} pairs longer than dataset.max_src_len={c.max_src_len} or "
                                               f"dataset.max_tgt_len={c.max_tgt_len} {verb}")
        if not kept:
            own = getattr(c, f"{split}_file", None)  # else the split is held out of the training file
            source = (f"dataset.{split}_file={own}" if own else f"dataset.train_file={c.train_file}" if c.train_file
                      else f"dataset={c.name}")
            why = notes.get(split) or ["it holds none"]  # empty sides dropped, pairs too long dropped
            hint = (" (raise dataset.max_src_len or dataset.max_tgt_len, or set dataset.too_long=truncate)" if long
                    else "")
            raise UserError(f"{source}: no {split} pairs are left ({'; '.join(why)}){hint}")
        arrays.update({f"{split}.{name}": array for name, array in ids.items()})
        if split in HELD_OUT:
            for side, texts in (("src", [pairs[i][0] for i in kept]), ("tgt", [pairs[i][1] for i in kept])):
                arrays[f"{split}.{side}_text"], arrays[f"{split}.{side}_text_offsets"] = \
                    flatten_bytes([text.encode("utf-8", "surrogatepass") for text in texts])
    meta = {"tokenizers": [src_tok.to_dict(), tgt_tok.to_dict()], "notes": notes, "dropped": dropped}
    del raw, pairs  # the text, as Python strings: more than the 315 MB file at a million pairs
    _give_back_freed_memory()
    return arrays, meta


def _give_back_freed_memory() -> None:
    """Return to the operating system the heap that the text and the tokenizers' training freed. glibc keeps freed
    memory for reuse, and training did not reuse it: 0.14 GB of it stayed resident at 100,000 pairs, on top of
    the training's own peak. Without glibc there is no malloc_trim, and nothing is done."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return
    gc.collect()
    trim(0)


CHUNK = 20_000  # pairs tokenised at a time: a large corpus never exists as Python lists of ids


def _encode(pairs, src_tok, tgt_tok, c) -> tuple[dict, list, int]:
    """The pairs' ids as flat arrays and offsets ({"src", "src_offsets", "tgt", "tgt_offsets"}), the numbers of the
    pairs kept, and how many were longer than the limits (dropped or cut as dataset.too_long says)."""
    dtypes = {"src": token_dtype(src_tok.vocab_size), "tgt": token_dtype(tgt_tok.vocab_size)}
    parts = {"src": [], "tgt": []}  # (flat, offsets) of each chunk
    kept, long = [], 0
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start:start + CHUNK]
        sources = src_tok.encode_batch([s for s, _ in chunk])
        targets = tgt_tok.encode_batch([t for _, t in chunk])
        rows = {"src": [], "tgt": []}
        for number, s, t in zip(range(start, start + len(chunk)), sources, targets):
            if len(s) > c.max_src_len or len(t) > c.max_tgt_len:
                long += 1
                if c.too_long == "filter":
                    continue
                s, t = s[: c.max_src_len], t[: c.max_tgt_len]
            if s and t:
                rows["src"].append(s)
                rows["tgt"].append(t)
                kept.append(number)
        for side in parts:
            parts[side].append(flatten(rows[side], dtypes[side]))
    arrays = {}
    for side in parts:
        arrays[side], arrays[f"{side}_offsets"] = concatenate(parts[side]) if parts[side] else flatten([], dtypes[side])
    return arrays, kept, long


def _strings(arrays, name) -> list:
    """The texts a cache keeps as UTF-8 bytes end to end, with offsets."""
    data, offsets = bytes(arrays[name]), arrays[f"{name}_offsets"].tolist()
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets, offsets[1:])]


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
