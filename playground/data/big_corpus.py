"""A synthetic parallel corpus of any size, with sentence lengths and word frequencies like a real one: for
measuring how the data side scales (`python -m playground.bench_data`), not for learning a language.

    python -m playground.data.big_corpus data/big --pairs 1000000    # data/big/{train,valid,test}.tsv

- Lengths: source sentences have log-normally distributed word counts, median 20 and mean about 23, cut to
  1..150 words: the shape of WMT14 English-German, whose training sentences average about 23 words.
- Words: a 50,000-word vocabulary of made-up words drawn with Zipf's law (frequency ~ 1/rank, the shortest
  words the most frequent), so a BPE vocabulary of 8,000 keeps whole the common words and splits the rare ones.
- Targets: each source word has its own target word; neighbouring words swap places now and then, and a few
  short function words come and go, so target lengths spread around the source lengths as a translation's do.
"""

import argparse
import time
from pathlib import Path

import numpy as np

VOCABULARY = 50_000
MEDIAN_WORDS, SPREAD, LONGEST = 20, 0.5, 150  # log-normal: exp(N(log 20, 0.5)) has mean 22.7
HELD_OUT = 1_000  # valid and test pairs each
SOURCE_CONSONANTS, SOURCE_VOWELS = list("bdfgklmnprstvz"), list("aeiou")
MOST_WORDS = sum((len(SOURCE_CONSONANTS) * len(SOURCE_VOWELS)) ** n for n in range(1, 5))  # of 1 to 4 syllables


def _words(rng, consonants, vowels, n) -> np.ndarray:
    """n distinct made-up words of 1 to 4 syllables, shortest first (the most frequent ranks are short)."""
    syllables = [c + v for c in consonants for v in vowels]
    words = set()
    while len(words) < n:
        count = rng.integers(1, 5)
        words.add("".join(syllables[i] for i in rng.integers(0, len(syllables), count)))
    return np.array(sorted(words, key=lambda w: (len(w), w)), dtype=object)


def make_corpus(pairs: int, seed: int = 0, vocabulary: int = VOCABULARY, median_words: float = MEDIAN_WORDS):
    """Yield `pairs` (source, target) sentence pairs over a vocabulary of `vocabulary` words a language."""
    rng = np.random.default_rng(seed)
    source_words = _words(rng, SOURCE_CONSONANTS, SOURCE_VOWELS, vocabulary)
    target_words = _words(rng, ["b", "ch", "d", "g", "l", "m", "n", "p", "r", "s", "sch", "t", "v", "z"],
                          ["a", "e", "ei", "i", "o", "u", "au"], vocabulary)
    meaning = rng.permutation(vocabulary)  # source word i means target word meaning[i]
    zipf = 1.0 / np.arange(1, vocabulary + 1)
    zipf /= zipf.sum()
    function_words = target_words[:8]
    done = 0
    while done < pairs:  # in blocks: a million sentences' word ids at once would take a few hundred MB
        n = min(100_000, pairs - done)
        lengths = np.clip(np.round(rng.lognormal(np.log(median_words), SPREAD, n)), 1, LONGEST).astype(np.int64)
        ids = rng.choice(vocabulary, size=int(lengths.sum()), p=zipf)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        swaps = rng.random(len(ids)) < 0.1
        extras = rng.integers(-1, 2, n) * (rng.random(n) < 0.5)  # a function word dropped, kept or added
        for i in range(n):
            words = ids[starts[i]:starts[i + 1]]
            source = " ".join(source_words[words])
            target = list(target_words[meaning[words]])
            for j in np.flatnonzero(swaps[starts[i]:starts[i + 1] - 1]):
                target[j], target[j + 1] = target[j + 1], target[j]
            if extras[i] > 0:
                target.insert(int(rng.integers(0, len(target) + 1)), function_words[i % 8])
            elif extras[i] < 0 and len(target) > 1:
                target.pop()
            yield source.capitalize() + ".", " ".join(target).capitalize() + "."
        done += n


def write_corpus(folder: Path, pairs: int, seed: int = 0, held_out: int = HELD_OUT, **shape) -> dict:
    """train.tsv with `pairs` pairs, and valid.tsv and test.tsv with `held_out` each; {split: path}. `shape` may
    give make_corpus's vocabulary and median_words."""
    folder.mkdir(parents=True, exist_ok=True)
    sentences = make_corpus(pairs + 2 * held_out, seed, **shape)
    paths = {}
    for split, n in (("valid", held_out), ("test", held_out), ("train", pairs)):
        paths[split] = folder / f"{split}.tsv"
        with open(paths[split], "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write("\t".join(next(sentences)) + "\n")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic parallel corpus with realistic sentence lengths.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pairs", type=int, default=100_000, help="training pairs")
    parser.add_argument("--held-out", type=int, default=HELD_OUT, help="valid and test pairs each")
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY, help="words in each language")
    parser.add_argument("--median-words", type=float, default=MEDIAN_WORDS, help="the median sentence length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for option, value in (("--pairs", args.pairs), ("--held-out", args.held_out)):
        if value < 1:  # 0: an empty file, which a run refuses; fewer: the held-out pairs wrote into train.tsv's place
            parser.error(f"{option} {value}: give 1 or more")
    if not 1 <= args.vocabulary <= MOST_WORDS:
        parser.error(f"--vocabulary {args.vocabulary}: give 1 to {MOST_WORDS:,} (the made-up words of 1 to 4 syllables)")
    if not args.median_words > 0:  # log-normal lengths around its logarithm: 0 or less made empty sentences
        parser.error(f"--median-words {args.median_words}: give a positive number of words")
    if args.folder.exists() and not args.folder.is_dir():
        parser.error(f"{args.folder} is a file: give a folder to write train, valid and test into")
    started = time.perf_counter()
    paths = write_corpus(args.folder, args.pairs, args.seed, args.held_out, vocabulary=args.vocabulary,
                         median_words=args.median_words)
    size = sum(p.stat().st_size for p in paths.values())
    print(f"wrote {args.pairs:,} training pairs and {args.held_out:,} valid and test pairs each to {args.folder}/ "
          f"({size / 1e6:,.0f} MB, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
