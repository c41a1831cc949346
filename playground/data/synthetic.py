"""Synthetic sequence-to-sequence tasks: copy, reverse and sort a random sequence of symbols.

Small enough to learn on a laptop CPU in a minute, hard enough to need attention: reversing a
sequence means each output position must find the mirrored input position.
"""

import random

from ..errors import UserError

TASKS = {
    "copy": lambda seq: list(seq),
    "reverse": lambda seq: list(reversed(seq)),
    "sort": lambda seq: sorted(seq),
}


def make_synthetic_splits(task, num_symbols, min_len, max_len, sizes, seed):
    """Draw distinct random source sequences and split them: {split: [(src_symbols, tgt_symbols), ...]}.

    Every source sequence appears in at most one split, and the same seed gives the same splits.
    """
    if task not in TASKS:
        raise UserError(f"dataset.name={task} is not a synthetic task: {', '.join(TASKS)}")
    if num_symbols < 2:
        raise UserError(f"dataset.vocab_size={num_symbols} must be at least 2")
    if not 1 <= min_len <= max_len:
        raise UserError(f"dataset.min_len={min_len} and dataset.max_len={max_len} need 1 <= min_len <= max_len")
    for split, n in sizes.items():
        if n <= 0:
            raise UserError(f"dataset.num_{split}={n} must be positive")
    total = sum(sizes.values())
    possible = sum(num_symbols**length for length in range(min_len, max_len + 1))
    if total > possible // 2:
        raise UserError(f"dataset asks for {total} distinct sequences but lengths {min_len}..{max_len} over "
                        f"{num_symbols} symbols allow only {possible}: raise dataset.max_len or dataset.vocab_size, "
                        f"or ask for fewer examples")
    rng = random.Random(seed)
    seen, pool = set(), []
    while len(pool) < total:
        seq = tuple(rng.randrange(num_symbols) for _ in range(rng.randint(min_len, max_len)))
        if seq not in seen:
            seen.add(seq)
            pool.append(seq)
    rng.shuffle(pool)
    splits, start = {}, 0
    for split, n in sizes.items():
        splits[split] = [(list(seq), TASKS[task](seq)) for seq in pool[start : start + n]]
        start += n
    return splits
