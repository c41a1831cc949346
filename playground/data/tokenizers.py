"""Tokenizers: text <-> ids, with the special ids fixed for all of them (PAD=0, BOS=1, EOS=2, UNK=3)."""

from ..model import BOS, EOS, PAD, UNK

SPECIALS = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK}


class SymbolTokenizer:
    """The synthetic tasks' vocabulary: symbols 0..n-1, written as space-separated numbers ("3 1 4")."""

    kind = "symbol"

    def __init__(self, num_symbols: int):
        self.num_symbols = num_symbols
        self.vocab_size = len(SPECIALS) + num_symbols

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in text.split():
            ids.append(len(SPECIALS) + int(piece) if piece.isdigit() and int(piece) < self.num_symbols else UNK)
        return ids

    def piece(self, i: int) -> str:
        """The text of one id, specials included: for labelling attention maps."""
        names = {v: k for k, v in SPECIALS.items()}
        return names[i] if i in names else str(i - len(SPECIALS))

    def decode(self, ids) -> str:
        """Ids to text, stopping at EOS and leaving out the other special tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                words.append(str(i - len(SPECIALS)))
            elif i == UNK:
                words.append("<unk>")
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_symbols": self.num_symbols}


def tokenizer_from_dict(state: dict):
    """Rebuild a tokenizer saved with `to_dict()` (it travels inside checkpoints)."""
    if state["kind"] == "symbol":
        return SymbolTokenizer(state["num_symbols"])
    raise ValueError(f"unknown tokenizer kind {state['kind']!r}")
