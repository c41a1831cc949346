"""Parallel text: sentence pairs from local files or the Hugging Face hub, checked line by line.

Formats (dataset.format, or `auto` from the file name):
- tsv:   one pair a line, `source<TAB>target`
- jsonl: one JSON object a line, {"src": ..., "tgt": ...} or {"translation": {"en": ..., "it": ...}}
- moses: two files with one sentence a line, `PREFIX.SRC_LANG` and `PREFIX.TGT_LANG` (train.en + train.it)
A mistake in a file stops the run before training, naming the file and line.
"""

import contextlib
import json
import os
import random
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import UserError

FORMATS = ("auto", "tsv", "jsonl", "moses")
BOM = "\ufeff"  # the byte order mark some editors (Windows Notepad) put at the start of a UTF-8 file
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair, which JSON's "\ud83d" can write alone


def decode_lines(raw_lines, where):
    """(line number, text) for each bytes line (split at "\n" only), without its line end or, on the first line, a
    byte order mark; a line whose bytes do not decode as UTF-8 is named with `where` (a file, or standard input)."""
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise UserError(f"{where} line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                            f"{e.start + 1})")
        yield number, text.removeprefix(BOM) if number == 1 else text


def _lines(path: Path):
    """(line number, text) for each line of a UTF-8 file."""
    with open(path, "rb") as f:
        yield from decode_lines(f, path)


def _tsv(path):
    for number, line in _lines(path):
        if not line.strip():
            continue
        tabs = line.count("\t")
        if tabs != 1:  # a third column (a score, an id) would otherwise end up inside the target sentence
            raise UserError(f'{path} line {number}: expected "source<TAB>target", found '
                            f'{"no TAB" if tabs == 0 else f"{tabs} TABs"}')
        source, target = line.split("\t")
        yield number, source, target


def _jsonl(path, src_lang, tgt_lang):
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number}: not JSON ({e.msg} at column {e.colno})")
        pair = _pair_from_record(item, src_lang, tgt_lang)
        if pair is None:
            raise UserError(f'{path} line {number}: expected {{"src": ..., "tgt": ...}} or {{"translation": '
                            f'{{"{src_lang}": ..., "{tgt_lang}": ...}}}} (dataset.src_lang, dataset.tgt_lang)')
        for side, text in zip(("source", "target"), pair):
            if lone := LONE_SURROGATE.search(text):  # no tokenizer, and no UTF-8 file of outputs, can take it
                raise UserError(f'{path} line {number}: the {side} holds "\\u{ord(lone.group()):04x}" without the '
                                f'other half of its UTF-16 surrogate pair, which is not a character (write the '
                                f'character itself, or both halves)')
        yield number, *pair


def _pair_from_record(item, src_lang, tgt_lang):
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("src"), str) and isinstance(item.get("tgt"), str):
        return item["src"], item["tgt"]
    translation = item.get("translation")
    if isinstance(translation, dict) and isinstance(translation.get(src_lang), str) \
            and isinstance(translation.get(tgt_lang), str):
        return translation[src_lang], translation[tgt_lang]
    return None


def _moses(prefix, src_lang, tgt_lang):
    src_path, tgt_path = Path(f"{prefix}.{src_lang}"), Path(f"{prefix}.{tgt_lang}")
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise UserError(f"{path}: no such file (dataset.format=moses reads PREFIX.{src_lang} and PREFIX.{tgt_lang})")
    sources, targets = list(_lines(src_path)), list(_lines(tgt_path))
    if len(sources) != len(targets):
        raise UserError(f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}: "
                        f"line n of one must translate line n of the other")
    for (number, source), (_, target) in zip(sources, targets):
        yield number, source, target


def detect_format(path, src_lang) -> str:
    path = Path(path)
    if not path.exists() and Path(f"{path}.{src_lang}").exists():
        return "moses"
    return "jsonl" if path.suffix in (".jsonl", ".json") else "tsv"


def read_pairs(path, fmt, src_lang, tgt_lang, key) -> list[tuple[str, str]]:
    """All (source, target) pairs of one file; `key` (dataset.train_file, ...) names the setting in errors."""
    if fmt not in FORMATS:
        raise UserError(f"dataset.format={fmt} is not one of: {', '.join(FORMATS)}")
    fmt = detect_format(path, src_lang) if fmt == "auto" else fmt
    if fmt == "moses":
        rows = _moses(path, src_lang, tgt_lang)
    else:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{key}={path} is a folder: give a file (TSV, JSONL, or a Moses prefix)")
        if not path.is_file():
            raise UserError(f"{key}={path}: no such file")
        rows = _tsv(path) if fmt == "tsv" else _jsonl(path, src_lang, tgt_lang)
    pairs = [(source.strip(), target.strip()) for _, source, target in rows]
    if not pairs:
        raise UserError(f"{key}={path}: the file holds no sentence pairs")
    return pairs


HUB_PROBE_SECONDS = 5.0


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (a name that does not resolve, a connection refused or
    timed out), or None where it can, or where this cannot tell: behind a proxy (the environment's or the
    system's), in offline mode already, or with an HF_ENDPOINT it cannot read."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or urllib.request.getproxies():
        return None
    try:
        host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = host.port or (80 if host.scheme == "http" else 443)
    except ValueError:  # a port out of range: the libraries will say what is wrong with it
        return None
    if not host.hostname:  # no scheme: not an address this can read
        return None
    try:
        socket.create_connection((host.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as e:
        return f"{host.hostname}: {e.strerror or type(e).__name__}"
    return None


@contextlib.contextmanager
def _hub_offline():
    """The Hugging Face libraries in offline mode for a while: cached files only, no network calls or retries."""
    import datasets
    import huggingface_hub

    modules = [m for m in (datasets.config, huggingface_hub.constants) if hasattr(m, "HF_HUB_OFFLINE")]
    before = [m.HF_HUB_OFFLINE for m in modules]
    for m in modules:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, value in zip(modules, before):
            m.HF_HUB_OFFLINE = value


def load_hub_pairs(name, config, src_lang, tgt_lang) -> list[tuple[str, str]]:
    """Sentence pairs of a Hugging Face dataset with a `translation` column (opus_books, wmt14, ...).

    `name` may also be a folder written by datasets' save_to_disk: the same code reads it offline.
    """
    try:
        import datasets
    except ImportError:
        raise UserError(f"dataset.hub_name={name} needs the `datasets` package: pip install -r requirements.txt")
    saved = any((Path(name) / f).is_file() for f in ("dataset_dict.json", "state.json"))  # by save_to_disk
    unreachable = None if Path(name).is_dir() else hub_unreachable()
    try:
        if saved:
            loaded = datasets.load_from_disk(name)
        else:  # the hub, or a local copy of a hub repository; no network: the local cache only, at once, rather than
            # half a minute of retries
            with _hub_offline() if unreachable else contextlib.nullcontext():
                loaded = datasets.load_dataset(name, config or f"{src_lang}-{tgt_lang}")
    except Exception as e:  # no network, an unknown name or language pair, a broken cache
        first_line = next(iter(str(e).splitlines()), type(e).__name__)
        why = (f"the hub cannot be reached ({unreachable}) and no copy is in the local cache" if unreachable else
               first_line[:300])
        if Path(name).is_dir():
            raise UserError(f"dataset.hub_name={name} ({config or f'{src_lang}-{tgt_lang}'}) could not be read: {why} "
                            f"(a folder is read as datasets' save_to_disk writes it, or as a copy of a hub dataset's "
                            f"repository)")
        raise UserError(f"dataset.hub_name={name} ({config or f'{src_lang}-{tgt_lang}'}) could not be loaded from the "
                        f"Hugging Face hub: {why} (is there a network connection? a local copy "
                        f"saved with save_to_disk can be given as dataset.hub_name=FOLDER)")
    if isinstance(loaded, datasets.DatasetDict) and "train" not in loaded:
        raise UserError(f"dataset.hub_name={name} has no train split to train on (its splits: {', '.join(loaded)})")
    split = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    pairs = []
    for number, item in enumerate(split, start=1):
        pair = _pair_from_record(item, src_lang, tgt_lang)
        if pair is None:
            raise UserError(f"dataset.hub_name={name} row {number}: no translation with languages "
                            f"{src_lang} and {tgt_lang} (dataset.src_lang, dataset.tgt_lang)")
        pairs.append((pair[0].strip(), pair[1].strip()))
    return pairs


def split_off(pairs, fraction, seed, key, total=None):
    """Split a seeded random `fraction` of `total` pairs (default: all of them) off: (rest, held_out)."""
    if not 0 < fraction < 1:
        raise UserError(f"{key}={fraction} must be between 0 and 1")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n = max(1, round(fraction * (total or len(pairs))))
    if n >= len(pairs):
        raise UserError(f"{key}={fraction} of {total or len(pairs)} pairs is {n}, and {len(pairs)} are left: none "
                        f"would remain to train on (the held-out fractions together must stay well under 1)")
    held = set(order[:n])
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in order[:n]]
