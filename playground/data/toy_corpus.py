"""A rule-based English -> Italian corpus, to try parallel-text training without downloading anything.

    python -m playground.data.toy_corpus data/toy            # data/toy/{train,valid,test}.tsv
    python -m playground.data.toy_corpus data/toy --format jsonl --pairs 8000

"we see seven red apples in the garden" -> "vediamo sette mele rosse nel giardino": the verb is
conjugated for the subject, the adjective follows the noun and agrees with its gender, and the
phrases map one to one, so a small Transformer can learn it in minutes on a CPU.
"""

import argparse
import json
import random
from pathlib import Path

SUBJECTS = ["i", "you", "we", "they"]  # io, tu, noi, loro: Italian drops the pronoun
VERBS = {"see": ["vedo", "vedi", "vediamo", "vedono"], "have": ["ho", "hai", "abbiamo", "hanno"],
         "want": ["voglio", "vuoi", "vogliamo", "vogliono"], "buy": ["compro", "compri", "compriamo", "comprano"]}
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty"]
NUMERI = ["due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove", "dieci", "undici", "dodici", "venti"]
NOUNS = {"apples": ("mele", "f"), "pears": ("pere", "f"), "books": ("libri", "m"), "cats": ("gatti", "m"),
         "houses": ("case", "f"), "dogs": ("cani", "m"), "chairs": ("sedie", "f"), "tables": ("tavoli", "m")}
ADJECTIVES = {"red": ("rossi", "rosse"), "new": ("nuovi", "nuove"), "old": ("vecchi", "vecchie"),
              "small": ("piccoli", "piccole"), "big": ("grandi", "grandi"), "green": ("verdi", "verdi"),
              "white": ("bianchi", "bianche")}
PLACES = {"": "", "in the garden": "nel giardino", "at home": "a casa", "today": "oggi", "in the city": "in città"}
DISTINCT = len(SUBJECTS) * len(VERBS) * len(NUMBERS) * len(ADJECTIVES) * len(NOUNS) * len(PLACES)  # 53,760 sentences
HELD_OUT = 300  # valid and test pairs each


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (English, Italian) sentence pairs drawn with a seeded generator."""
    if n > DISTINCT:  # the draws below would never end
        raise ValueError(f"the toy grammar has {DISTINCT} distinct sentences, fewer than {n}")
    rng, pairs, seen = random.Random(seed), [], set()
    while len(pairs) < n:
        person, verb = rng.randrange(4), rng.choice(list(VERBS))
        number, noun, adjective, place = rng.randrange(len(NUMBERS)), rng.choice(list(NOUNS)), \
            rng.choice(list(ADJECTIVES)), rng.choice(list(PLACES))
        english = " ".join(filter(None, [SUBJECTS[person], verb, NUMBERS[number], adjective, noun, place]))
        if english in seen:
            continue
        seen.add(english)
        nome, gender = NOUNS[noun]
        aggettivo = ADJECTIVES[adjective][0 if gender == "m" else 1]
        italian = " ".join(filter(None, [VERBS[verb][person], NUMERI[number], nome, aggettivo, PLACES[place]]))
        pairs.append((english, italian))
    return pairs


def write(pairs, path: Path, fmt: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for en, it in pairs:
            f.write(json.dumps({"translation": {"en": en, "it": it}}, ensure_ascii=False) + "\n" if fmt == "jsonl"
                    else f"{en}\t{it}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a rule-based English -> Italian parallel corpus.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pairs", type=int, default=6000, help=f"training pairs (valid and test get {HELD_OUT} each)")
    parser.add_argument("--format", choices=["tsv", "jsonl"], default="tsv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.pairs <= DISTINCT - 2 * HELD_OUT:  # 0: an empty train.tsv; fewer: test pairs in it
        parser.error(f"--pairs {args.pairs}: give 1 to {DISTINCT - 2 * HELD_OUT} (the toy grammar has {DISTINCT} "
                     f"distinct sentences, and valid and test take {HELD_OUT} each)")
    if args.folder.exists() and not args.folder.is_dir():
        parser.error(f"{args.folder} is a file: give a folder to write train, valid and test into")
    args.folder.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(args.pairs + 2 * HELD_OUT, args.seed)
    splits = {"train": pairs[:args.pairs], "valid": pairs[args.pairs:args.pairs + HELD_OUT], "test": pairs[-HELD_OUT:]}
    for split, rows in splits.items():
        write(rows, args.folder / f"{split}.{args.format}", args.format)
    print(f"wrote {', '.join(f'{len(r)} {s}' for s, r in splits.items())} pairs to {args.folder}/")


if __name__ == "__main__":
    main()
