"""Tokenizers: text <-> ids, with the special ids fixed for all of them (PAD=0, BOS=1, EOS=2, UNK=3).

- `SymbolTokenizer`: the synthetic tasks' symbols, written as space-separated numbers ("3 1 4").
- `CharTokenizer`: one id per character seen in the training text.
- `HFTokenizer`: word-level (words and punctuation marks) or BPE, both decoding to the text's own spacing, trained
  with the Hugging Face `tokenizers` library on the training split only, and saved as its JSON.
Each has encode(text) -> ids (no BOS/EOS), encode_batch(texts) -> a list of those, decode(ids) -> text (stopping at
EOS, specials left out), piece(id) -> its text, vocab_size, and to_dict() -> plain values that travel inside
checkpoints.
"""

from collections import Counter

from ..errors import UserError

# The special ids, the same for every tokenizer. They belong to the vocabulary: the model is handed the ones it
# needs (padding, BOS, EOS) by whoever builds it, and never imports them.
PAD, BOS, EOS, UNK = 0, 1, 2, 3
MODEL_IDS = {"pad_id": PAD, "bos_id": BOS, "eos_id": EOS}  # the ones build_model takes: build_model(..., **MODEL_IDS)

SPECIALS = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK}
SPECIAL_TOKENS = sorted(SPECIALS, key=SPECIALS.get)  # in id order: a trainer given this list assigns 0..3


def _until_eos(ids):
    for i in ids:
        i = int(i)
        if i == EOS:
            return
        yield i


class _Tokenizer:
    def encode_batch(self, texts) -> list[list[int]]:
        """encode() of each text (a tokenizer with a faster way overrides this)."""
        return [self.encode(text) for text in texts]


class SymbolTokenizer(_Tokenizer):
    """The synthetic tasks' vocabulary: symbols 0..n-1, written as space-separated numbers ("3 1 4")."""

    kind = "symbol"

    def __init__(self, num_symbols: int):
        self.num_symbols = num_symbols
        self.ids = {str(s): len(SPECIALS) + s for s in range(num_symbols)}  # the inverse of piece(): "3" -> 7
        self.vocab_size = len(SPECIALS) + num_symbols

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(p, UNK) for p in text.split()]

    def piece(self, i: int) -> str:
        return SPECIAL_TOKENS[i] if i < len(SPECIALS) else str(i - len(SPECIALS))

    def decode(self, ids) -> str:
        return " ".join(self.piece(i) for i in _until_eos(ids) if i >= len(SPECIALS) or i == UNK)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_symbols": self.num_symbols}


class CharTokenizer(_Tokenizer):
    """One id per character that occurs at least min_frequency times in the training text."""

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.ids = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}
        self.vocab_size = len(SPECIALS) + len(self.chars)

    @classmethod
    def train(cls, texts, vocab_size, min_frequency):
        counts = Counter(c for text in texts for c in text)
        common = [c for c, n in counts.most_common(max(vocab_size - len(SPECIALS), 1)) if n >= min_frequency]
        return cls(sorted(common))

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(c, UNK) for c in text]

    def piece(self, i: int) -> str:
        return SPECIAL_TOKENS[i] if i < len(SPECIALS) else self.chars[i - len(SPECIALS)]

    def decode(self, ids) -> str:
        return "".join(self.piece(i) for i in _until_eos(ids) if i >= len(SPECIALS))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class HFTokenizer(_Tokenizer):
    """Word-level or BPE tokenization by the `tokenizers` library (Sennrich et al. 2016 for BPE)."""

    def __init__(self, tokenizer, kind):
        self.tokenizer, self.kind = tokenizer, kind
        # "<s>", "</s>" or "<pad>" written in a sentence is text, as training read it: never BOS, EOS or PAD, which
        # would end a target early or mask a source word (the library matches the special tokens in the text
        # otherwise, and does not save this setting in its JSON, so it is set here for a tokenizer loaded too)
        tokenizer.encode_special_tokens = True
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts, kind, vocab_size, min_frequency):
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        if kind == "word":  # words and runs of punctuation, each marked with a leading "▁" where a space preceded it,
            # so that decoding gives back the text's own spacing ("l'uomo", "3.5", "disse:"), which BLEU, chrF, CER
            # and WER compare with the reference as written
            tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Metaspace(), pre_tokenizers.Split(Regex(r"▁?[^\w▁]+"), behavior="isolated")])
            tokenizer.decoder = decoders.Metaspace()
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                special_tokens=SPECIAL_TOKENS)
        else:  # BPE over words marked with a leading "▁", which decoding turns back into spaces
            tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
            tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
            tokenizer.decoder = decoders.Metaspace()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=SPECIAL_TOKENS, show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD, BOS, EOS, UNK]
        return cls(tokenizer, kind)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        """Many texts at once, on all cores (the library's Rust threads): how a large corpus is tokenised."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def piece(self, i: int) -> str:
        return self.tokenizer.id_to_token(i)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(_until_eos(ids)), skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "json": self.tokenizer.to_str()}


TOKENIZER_KINDS = ("char", "word", "bpe")


def train_tokenizer(kind, texts, vocab_size, min_frequency):
    """A new tokenizer of dataset.tokenizer=kind, learned from the training texts only."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"dataset.tokenizer={kind} is not one of: {', '.join(TOKENIZER_KINDS)}")
    if vocab_size <= len(SPECIALS):
        raise UserError(f"dataset.vocab_size={vocab_size} leaves no room beside the {len(SPECIALS)} special tokens")
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size, min_frequency)
    return HFTokenizer.train(texts, kind, vocab_size, min_frequency)


def tokenizer_from_dict(state: dict):
    """Rebuild a tokenizer saved with `to_dict()` (it travels inside checkpoints)."""
    if state["kind"] == "symbol":
        return SymbolTokenizer(state["num_symbols"])
    if state["kind"] == "char":
        return CharTokenizer(state["chars"])
    if state["kind"] in ("word", "bpe"):
        from tokenizers import Tokenizer

        return HFTokenizer(Tokenizer.from_str(state["json"]), state["kind"])
    raise ValueError(f"unknown tokenizer kind {state['kind']!r}")
