"""The run doctor: signatures of a run going wrong, recognised while it trains, each reported once, in the log and
in TensorBoard's TEXT tab (tag "doctor"), with its likely cause and the key to change. The thresholds:

| signature | when it fires |
|---|---|
| not learning | after 20% of the steps (and at least 20), the training loss of a log window after the first is still above 95% of ln(V), the loss of a uniform guess |
| decoding fails | valid BLEU below 1 while teacher-forced token accuracy is 0.5 or more; or exact match 0 while token accuracy is above 0.9 |
| overfitting | the valid loss rose at 3 evaluations in a row, by 1% or more in all, while the training loss fell |
| unstable | one step's gradient norm is over 10 times the median of the previous (up to 500) steps' norms, once 50 are known |
| vocabulary | more than 2% of the training tokens (source or target) are <unk> |
"""

import math
import statistics
from collections import deque

from .data import UNK

CHANCE_MARGIN = 0.05  # the loss counts as "at chance" above 95% of ln(V) (label smoothing can put it above ln(V))
NOT_LEARNING_AFTER, NOT_LEARNING_MIN_STEPS = 0.2, 20  # share of max_steps, and at least this many: a smoke test of
# 10 steps is not expected to have learned
RISES = 3  # evaluations in a row
RISE_AT_LEAST = 0.01  # relative rise of the valid loss over those evaluations
SPIKE_FACTOR, SPIKE_HISTORY, SPIKE_MIN_HISTORY = 10.0, 500, 50
UNK_SHARE = 0.02


def unk_shares(split) -> dict:
    """The share of <unk> among the real tokens of each side of a training split (TokenPairs; estimated from a
    sample of a few million tokens on a larger corpus)."""
    source, target = split.share(UNK)
    return {"source": source, "target": target}


class Doctor:
    """Watches a run's numbers and calls report(message, step) once for each signature it recognises."""

    def __init__(self, vocab_size: int, max_steps: int, report):
        self.chance, self.max_steps, self.report = math.log(vocab_size), max_steps, report
        self.found = {}  # signature -> message
        self.train_loss = None
        self.logs = 0  # log windows seen: the first one's mean includes the first steps, before any learning
        self.evals = []  # (valid loss, train loss) at each evaluation
        self.norms = deque(maxlen=SPIKE_HISTORY)

    def _fire(self, signature: str, message: str, step: int) -> None:
        if signature not in self.found:
            self.found[signature] = message
            self.report(f"doctor: {message}", step)

    def check_data(self, shares: dict, step: int = 0) -> None:
        """shares: {"source": .., "target": ..} from unk_shares."""
        worst = max(shares, key=shares.get)
        if shares[worst] > UNK_SHARE:
            self._fire("vocabulary", f"{shares[worst]:.1%} of the {worst} training tokens are <unk> (source "
                       f"{shares['source']:.1%}, target {shares['target']:.1%}): the vocabulary misses too much of "
                       f"the text. Raise dataset.vocab_size, lower dataset.min_frequency, or use dataset.tokenizer=bpe",
                       step)

    def on_log(self, step: int, train_loss: float, grad_norms) -> None:
        """At each log step: the window's mean training loss and each of its steps' gradient norms (oldest first)."""
        self.train_loss, self.logs = train_loss, self.logs + 1
        late_enough = step >= max(NOT_LEARNING_AFTER * self.max_steps, NOT_LEARNING_MIN_STEPS) and self.logs > 1
        if late_enough and train_loss > (1 - CHANCE_MARGIN) * self.chance:
            self._fire("not learning", f"train/loss {train_loss:.3f} at step {step} of {self.max_steps} is still "
                       f"above {1 - CHANCE_MARGIN:.0%} of ln(V) = {self.chance:.3f}, a uniform guess: the model is not "
                       f"learning. Lower optimizer.lr or lengthen scheduler.warmup_steps (post-norm, the default, needs warmup); "
                       f"check that the targets depend on the sources", step)
        for norm in grad_norms:
            if len(self.norms) >= SPIKE_MIN_HISTORY:
                median = statistics.median(self.norms)
                if norm > SPIKE_FACTOR * median:
                    self._fire("unstable", f"a gradient norm of {norm:.3g} near step {step} is "
                               f"{norm / median:.0f}x the median of the steps before ({median:.3g}): training is "
                               f"unstable. Lower optimizer.lr, lengthen scheduler.warmup_steps, keep "
                               f"trainer.grad_clip on, or try model.norm_position=pre", step)
            self.norms.append(norm)

    def on_eval(self, step: int, metrics: dict) -> None:
        """At each evaluation: the valid metrics (loss, token_accuracy, exact_match, bleu, ...)."""
        accuracy, bleu, exact = metrics.get("token_accuracy", 0.0), metrics.get("bleu"), metrics.get("exact_match")
        cause = ("check the causal mask (is model.ablate hiding it?), that outputs can end (EOS), "
                 "decode.max_len_a and decode.max_len_b, and the target vocabulary")
        if bleu is not None and bleu < 1 and accuracy >= 0.5:
            self._fire("decoding fails", f"valid/bleu {bleu:.2f} at step {step} although teacher-forced "
                       f"valid/token_accuracy is {accuracy:.2f}: the model predicts the next token when shown the "
                       f"reference but fails when it decodes on its own: {cause}", step)
        elif exact is not None and exact == 0 and accuracy > 0.9:
            self._fire("decoding fails", f"valid/exact_match 0 at step {step} although teacher-forced "
                       f"valid/token_accuracy is {accuracy:.2f}: {cause}", step)
        if self.train_loss is not None and "loss" in metrics:
            self.evals.append((metrics["loss"], self.train_loss))
        if len(self.evals) > RISES:
            valid = [v for v, _ in self.evals[-RISES - 1:]]
            train_then, train_now = self.evals[-RISES - 1][1], self.evals[-1][1]
            rising = all(a < b for a, b in zip(valid, valid[1:])) and valid[-1] >= (1 + RISE_AT_LEAST) * valid[0]
            if rising and train_now < train_then:
                self._fire("overfitting", f"valid/loss rose from {valid[0]:.3f} to {valid[-1]:.3f} over the last "
                           f"{RISES} evaluations while train/loss fell from {train_then:.3f} to {train_now:.3f}: the "
                           f"model is overfitting. Raise model.dropout or trainer.label_smoothing, add data, or set "
                           f"trainer.patience to stop at the best evaluation", step)

    def summary(self) -> str:
        """The signatures found, one a line, or an empty string."""
        return "\n".join(f"- {message}" for message in self.found.values())
