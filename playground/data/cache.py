"""The token cache: a corpus of parallel text tokenised once, then memory-mapped by every later run and process.

The first run of a text corpus reads it, trains the tokenizers and writes every split's token ids, in the smallest
integer type the vocabulary fits, into one file (as fairseq-preprocess binarises a corpus). Later runs, eval and
every torchrun rank map that file into memory: the operating system pages in what a batch reads, and processes
on one machine share the pages.

Where: dataset.cache_dir, or by default a `.playground-cache` folder beside the training file (a user cache
folder, ~/.cache/transformer-playground, when that one cannot be written).

Key: the SHA-256 of every data file read, by its role (train, valid, test), the dataset keys that change the
tokens (tokenizer, vocab_size, lengths, held-out fractions, ...) and the `tokenizers` version, so an edited file,
or one replaced by another of the same size and time, gets a new cache. A truncated or corrupt cache file (or
one whose header names another version) is rebuilt, with one log line naming it.

One file, little-endian:
    MAGIC (8 bytes) | header length (8 bytes) | JSON header | arrays, each at a 64-byte boundary | END (8 bytes)
The header lists each array's dtype, shape and offset, the meta data (tokenizers, notes) and one SHA-256 of the
rest of the header and the array bytes. The file is written to a temporary file renamed into place, under a
lock: a second process building the same cache waits for the first and then reads its file; a half-written
cache is never read.
"""

import contextlib
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

FORMAT = 5  # raise it when what a cache holds, or how text becomes its ids, changes
MAGIC, END = b"TPTOKEN\x00", b"TPEND\x00\x00\x00"
ALIGN = 64
FOLDER = ".playground-cache"
# the dataset keys that decide which ids a corpus becomes
KEYED = ("name", "format", "src_lang", "tgt_lang", "tokenizer", "vocab_size", "min_frequency", "shared_vocab",
         "max_src_len", "max_tgt_len", "too_long", "seed", "valid_fraction", "test_fraction")


class Unusable(Exception):
    """A cache file that must be rebuilt, and why (truncated, corrupt, another version)."""


def library_version() -> str:
    import tokenizers

    return tokenizers.__version__


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, computed once per process for a file its size and time say is unchanged."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def corpus_key(c, files: dict, tokenizers=None) -> str:
    """What names a cache: the content of the data files, each by its role ({"train_file": [paths], ...}), the
    dataset keys in KEYED, the cache format, the `tokenizers` version and, when the tokenizers are given (a
    resumed run, eval), the tokenizers themselves."""
    what = {"format": FORMAT, "library": library_version(), "dataset": {key: getattr(c, key) for key in KEYED},
            "files": {role: [file_sha256(path) for path in paths] for role, paths in files.items()}}
    if tokenizers is not None:
        what["tokenizers"] = [tokenizer.to_dict() for tokenizer in tokenizers]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def cache_folder(cache_dir, train_file):
    """dataset.cache_dir, or `.playground-cache` beside the training file, or the user's cache folder when that
    one cannot be written; None when none can (the run goes on without a cache)."""
    if cache_dir:
        folder = Path(cache_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"dataset.cache_dir={cache_dir} cannot be made: {e.strerror}")
        if not os.access(folder, os.W_OK):
            raise UserError(f"dataset.cache_dir={cache_dir} is not writable (give another folder, or "
                            f"dataset.cache=false)")
        return folder
    beside = Path(train_file).parent / FOLDER
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transformer-playground"
    for folder in (beside, home):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                if folder == home:
                    log.info(f"dataset cache: {beside} cannot be written, so the cache goes to {home} "
                             f"(or set dataset.cache_dir)")
                return folder
        except OSError:
            pass
    log.warning(f"dataset cache: neither {beside} nor {home} can be written; going on without a cache "
                f"(set dataset.cache_dir)")
    return None


def write(path: Path, arrays: dict, meta: dict) -> None:
    """Write arrays and meta data as one cache file, atomically: a temporary file renamed into place."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    layout, offset = {}, 0
    for name, array in arrays.items():
        offset = -(-offset // ALIGN) * ALIGN
        layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        offset += array.nbytes
    described = {"format": FORMAT, "tokenizers_library": library_version(), "arrays": layout, "data_bytes": offset,
                 "meta": meta}
    digest = hashlib.sha256(_canonical(described))
    for chunk in _data_region(arrays, layout):
        digest.update(chunk)
    header = json.dumps({**described, "sha256": digest.hexdigest()}).encode()
    start = -(-(16 + len(header)) // ALIGN) * ALIGN
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header + b"\0" * (start - 16 - len(header)))
            for chunk in _data_region(arrays, layout):
                f.write(chunk)
            f.write(END)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _canonical(header: dict) -> bytes:
    """The header's content, but its checksum, as the bytes the checksum covers (with the arrays' bytes)."""
    return json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode()


def _data_region(arrays, layout):
    """The bytes after the header, in order: each array after the zeros that align it."""
    end = 0
    for name, array in arrays.items():
        yield b"\0" * (layout[name]["offset"] - end)
        yield memoryview(array).cast("B")
        end = layout[name]["offset"] + array.nbytes


def read(path: Path) -> tuple[dict, dict]:
    """(arrays memory-mapped read-only, meta) of a cache file; Unusable says why the file cannot be used."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:8] != MAGIC[:len(head)] or len(head) < 16:
            raise Unusable(f"is truncated ({size:,} bytes)" if MAGIC.startswith(head[:8]) else
                           "is not a token cache (its first bytes are wrong)")
        length = int.from_bytes(head[8:], "little")
        if 16 + length > size:
            raise Unusable(f"is truncated ({size:,} bytes, shorter than its own header)")
        try:
            header = json.loads(f.read(length))
            data_bytes = int(header["data_bytes"])
        except (ValueError, KeyError, TypeError):
            raise Unusable("is corrupt (its header is not readable)")
        if header.get("format") != FORMAT or header.get("tokenizers_library") != library_version():
            raise Unusable(f"was written by another version (cache format {header.get('format')}, tokenizers "
                           f"{header.get('tokenizers_library')}; now {FORMAT} and {library_version()})")
        start = -(-(16 + length) // ALIGN) * ALIGN
        if size != start + data_bytes + len(END):
            raise Unusable(f"is truncated ({size:,} of {start + data_bytes + len(END):,} bytes)")
        f.seek(start)
        digest = hashlib.sha256(_canonical(header))
        left = data_bytes
        while left:
            block = f.read(min(left, 1 << 22))
            digest.update(block)
            left -= len(block)
        if digest.hexdigest() != header.get("sha256") or f.read() != END:  # a damaged key name loses it too
            raise Unusable("is corrupt (its content does not match its SHA-256)")
    whole = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(data_bytes,)) if data_bytes else None
    arrays = {}
    try:
        for name, entry in header["arrays"].items():
            dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
            count, begin = int(np.prod(shape)), int(entry["offset"])
            if begin < 0 or begin + count * dtype.itemsize > data_bytes:
                raise ValueError(f"array {name} lies outside the file")
            arrays[name] = whole[begin:begin + count * dtype.itemsize].view(dtype).reshape(shape) if count \
                else np.zeros(shape, dtype)
        return arrays, header["meta"]
    except (ValueError, KeyError, TypeError) as e:  # a header whose checksum matches, written wrong
        raise Unusable(f"is corrupt ({e})")


@contextlib.contextmanager
def locked(path: Path):
    """Hold `path`.lock while building: another process building the same cache waits here, then finds it built.
    (Where there is no fcntl, Windows, the rename into place alone keeps a half-written cache from being read.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        lock = open(path.with_name(path.name + ".lock"), "a")
    except OSError:  # an unwritable folder: the write will fail too, and say so
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"dataset cache: another process is building {path}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _identity(path: Path):
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def load(path: Path):
    """(arrays, meta) of the cache at `path`; None when there is none, or it is unusable (one log line says why)."""
    if not path.exists():
        return None
    try:
        return read(path)
    except Unusable as e:
        log.warning(f"dataset cache: {path} {e}: rebuilding it")
        return None


def load_or_build(path: Path, build):
    """(arrays, meta) of the cache at `path`, built by build() -> (arrays, meta) and written first when there is
    none, or it is unusable."""
    seen = _identity(path)
    found = load(path)
    if found is not None:
        return found
    with locked(path):
        if _identity(path) not in (None, seen):  # built by another process while this one waited
            found = load(path)
            if found is not None:
                return found
        arrays, meta = build()
        try:
            write(path, arrays, meta)
        except OSError as e:  # a full disk, a folder turned read-only: this run goes on with the ids in memory
            log.warning(f"dataset cache: {path} cannot be written ({e.strerror}); going on without a cache")
            return arrays, meta
    return read(path)
