"""Is run A's BLEU really better than run B's? A paired bootstrap over their test sentences (Koehn 2004).

    python -m playground.compare outputs/<date>/<a> outputs/<date>/<b>
    python -m playground.compare RUN_A RUN_B --resamples 1000 --seed 12345

Each run directory holds hypotheses.txt and references.txt (written by every training run and mode=eval). The
test sentences are drawn with replacement, the same draw for both systems, 1,000 times; each draw's corpus BLEU
difference goes into the distribution. The printout gives the difference on the whole test set, its 95% interval
(2.5th to 97.5th percentile of the draws) and a two-sided p-value: twice the share of draws on the far side of 0
(at most 1). Identical systems give p = 1; p < 0.05 says the difference is unlikely to be an accident of which
sentences the test set happens to hold. BLEU is sacreBLEU's corpus BLEU (13a tokenisation, exp smoothing),
computed here from each sentence's n-gram counts so that a draw costs a sum rather than a re-tokenisation.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import UserError


def _lines(run: Path, name: str) -> list:
    path = Path(run) / name
    if not path.is_file():
        what = "hypotheses" if name == "hypotheses.txt" else "references (written by runs since the decode group)"
        raise UserError(f"{run}: no {name}, so no test {what} to compare (train or evaluate it with mode=eval first)")
    data = path.read_bytes()
    try:  # lines end at "\n" only, as runs write them and sacreBLEU reads them: a "\r" inside a sentence stays in it
        return data.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text ({e.reason})") from None


def sentence_statistics(hypotheses, references) -> np.ndarray:
    """(N, 10): each sentence's matching and total n-grams for n = 1..4, its length and its reference's length."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    rows = []
    for hypothesis, reference in zip(hypotheses, references):
        score = bleu.corpus_score([hypothesis], [[reference]])
        rows.append([*score.counts, *score.totals, score.sys_len, score.ref_len])
    return np.array(rows, dtype=np.int64).reshape(-1, 10)


def corpus_bleu(statistics: np.ndarray) -> float:
    """sacreBLEU's corpus BLEU (exp smoothing) from summed sentence statistics (10,)."""
    from sacrebleu.metrics import BLEU

    s = [int(x) for x in statistics]
    return BLEU.compute_bleu(s[0:4], s[4:8], s[8], s[9], smooth_method="exp").score


def paired_bootstrap(hypotheses_a, hypotheses_b, references, resamples: int = 1000, seed: int = 12345) -> dict:
    """{bleu_a, bleu_b, delta, low, high, p}: delta = BLEU(A) - BLEU(B) on all sentences, its 95% bootstrap
    interval [low, high], and the two-sided p-value of "no difference"."""
    a, b = sentence_statistics(hypotheses_a, references), sentence_statistics(hypotheses_b, references)
    rng = np.random.default_rng(seed)
    n = len(references)
    deltas = np.empty(resamples)
    for i in range(resamples):
        draw = rng.integers(0, n, n)  # the same sentences for both systems: the comparison is paired
        deltas[i] = corpus_bleu(a[draw].sum(0)) - corpus_bleu(b[draw].sum(0))
    bleu_a, bleu_b = corpus_bleu(a.sum(0)), corpus_bleu(b.sum(0))
    p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    return {"bleu_a": bleu_a, "bleu_b": bleu_b, "delta": bleu_a - bleu_b, "low": float(np.percentile(deltas, 2.5)),
            "high": float(np.percentile(deltas, 97.5)), "p": float(p)}


def compare(run_a, run_b, resamples: int = 1000, seed: int = 12345) -> dict:
    """paired_bootstrap on two run directories, which must hold the same test set."""
    if resamples < 1:
        raise UserError(f"--resamples {resamples}: the number of paired draws, at least 1")
    if seed < 0:
        raise UserError(f"--seed {seed}: the seed of the draws, 0 or more")
    hyps_a, hyps_b = _lines(run_a, "hypotheses.txt"), _lines(run_b, "hypotheses.txt")
    refs_a, refs_b = _lines(run_a, "references.txt"), _lines(run_b, "references.txt")
    if refs_a != refs_b:
        raise UserError(f"{run_a} and {run_b} were tested on different test sets ({len(refs_a)} and {len(refs_b)} "
                        f"references{'' if len(refs_a) != len(refs_b) else ', not the same ones'}): a paired "
                        f"comparison needs the same sentences")
    for run, hyps in ((run_a, hyps_a), (run_b, hyps_b)):
        if len(hyps) != len(refs_a):
            raise UserError(f"{run}: hypotheses.txt has {len(hyps)} lines and references.txt {len(refs_a)}")
    if not refs_a:
        raise UserError(f"{run_a}: the test set is empty")
    return paired_bootstrap(hyps_a, hyps_b, refs_a, resamples, seed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    try:
        r = compare(args.run_a, args.run_b, args.resamples, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verdict = "a real difference (p < 0.05)" if r["p"] < 0.05 else "within the noise of the test set (p >= 0.05)"
    # no draw on the far side of 0: the p-value is below what this many draws can resolve, not 0
    p = f"p < {1 / args.resamples:.2g}" if r["p"] == 0 else f"p = {r['p']:.3f}"
    print(f"BLEU  A {r['bleu_a']:.2f}  B {r['bleu_b']:.2f}\n"
          f"A - B {r['delta']:+.2f}, 95% interval [{r['low']:+.2f}, {r['high']:+.2f}], {p} "
          f"({args.resamples} paired resamples): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
