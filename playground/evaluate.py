"""Metrics on a held-out split: teacher-forced loss, NLL and token accuracy, and exact match of decoded outputs."""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from .config import DecodeConfig
from .data import PAD
from .model import loss as model_loss
from .model.decoding import beam_search


def exact_matches(pred, ref):
    """Rows of pred (B, L) equal to ref (B, T) once both are padded to one width: (B,) bool."""
    width = max(pred.size(1), ref.size(1))
    pred = F.pad(pred, (0, width - pred.size(1)), value=PAD)
    ref = F.pad(ref, (0, width - ref.size(1)), value=PAD)
    return (pred == ref).all(dim=1)


def output_limits(model, src, d):
    """Each row's longest output (B,): max_len_a * its source length + max_len_b tokens, within the model's positions
    (model.max_len outputs, EOS included: the decoder reads BOS and all but the last of them)."""
    lengths = (src != PAD).sum(1)  # (B,)
    # in whole numbers, a as the fraction it was written as: 1.3 * 90 + 10 is 127 tokens, which float32 (126.99998)
    # and even float64 (0.29 * 100 = 28.999999999999996) would cut to one less (and MPS has no float64)
    a = Fraction(d.max_len_a).limit_denominator(10**6)
    return (lengths * a.numerator // a.denominator + int(d.max_len_b)).clamp(1, model.max_len)


def decode(model, src, d, generator=None):
    """Decode src (B, S) as the decode settings d say (a playground.config.DecodeConfig): ids (B, L)."""
    return model.generate(src, output_limits(model, src, d), d.beam_size, d.length_penalty, sampling=d.sampling,
                          temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
                          no_repeat_ngram_size=d.no_repeat_ngram_size, generator=generator)


def decode_nbest(model, src, d):
    """Beam search's d.nbest best hypotheses for src (B, S), best first: ids (B, N, L) and scores (B, N)."""
    return beam_search(model, src, output_limits(model, src, d), d.beam_size, d.length_penalty, d.nbest,
                       d.no_repeat_ngram_size)


TOKENS_AT_ONCE = 2048  # target positions whose logits an evaluation computes at once (a training batch has more)


def _teacher_forced(model, src, tgt, autocast, label_smoothing, loss_fn):
    """Sums over rows src (B, S), tgt (B, T+1) with the reference as the decoder's input: the loss (the training
    loss function's, so that an edit to it shows in the valid and test loss too), the NLL, the correctly predicted
    tokens and the tokens."""
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # (B, T)
    with autocast():
        logits = model(src, tgt_in).float()  # (B, T, V), one fp32 copy for both sums
    real = tgt_out != PAD
    nll_sum = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, reduction="sum")
    loss_sum = loss_fn(logits, tgt_out, label_smoothing, PAD) * real.sum()  # the loss is a mean over real tokens
    correct = ((logits.argmax(-1) == tgt_out) & real).sum()
    return torch.stack([loss_sum, nll_sum, correct, real.sum()])


@torch.no_grad()
def evaluate(model, data, batch_size, device, autocast, label_smoothing=0.0, decoding=None, rows=None, reduce=None,
             loss_fn=None):
    """Return ({loss, nll, ppl, token_accuracy, exact_match}, predictions) over `rows` of data (default: all).

    loss is the label-smoothed training objective (never below about 0.6 with epsilon 0.1 and a 16-symbol
    vocabulary, however good the model); nll is the plain negative log-likelihood per target token, in nats,
    and ppl = exp(nll) the perplexity. predictions are the outputs decoded as `decoding` says (a DecodeConfig;
    default greedy), one id list per evaluated row. With several processes each evaluates its own rows and
    `reduce` sums the totals across them before the metrics are computed. loss_fn is the training loss function
    (default: the model's `sequence_loss`, looked up now, so that an edit to it is what evaluates).
    """
    decoding = decoding or DecodeConfig()
    loss_fn = loss_fn or model_loss.sequence_loss
    was_training = model.training
    model.eval()
    rows = torch.arange(len(data)) if rows is None else rows
    # loss sum, NLL sum, correct tokens, tokens, exactly matched sequences, sequences
    totals = torch.zeros(6, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    predictions = []
    for index in rows.split(batch_size):
        if not len(index):  # a process's share of a split smaller than the number of processes: no rows
            continue
        src, tgt = (t.to(device, non_blocking=True) for t in data.batch(index))
        tgt_out = tgt[:, 1:]  # (B, T)
        # the teacher-forced sums a few rows at a time: B x T x V logits of a whole batch of 500 would take GBs
        rows_at_once = max(1, TOKENS_AT_ONCE // tgt_out.size(1))
        for part in range(0, len(index), rows_at_once):
            totals[:4] += _teacher_forced(model, src[part:part + rows_at_once], tgt[part:part + rows_at_once],
                                          autocast, label_smoothing, loss_fn).to(totals)
        with autocast():
            pred = decode(model, src, decoding)  # (B, L)
        totals[4] += exact_matches(pred, tgt_out).sum()
        totals[5] += len(index)
        predictions.extend(pred.cpu().tolist())
    model.train(was_training)
    if reduce is not None:
        reduce(totals)
    loss_sum, nll_sum, correct, tokens, exact, sequences = totals.tolist()
    nll = nll_sum / tokens
    metrics = {"loss": loss_sum / tokens, "nll": nll, "ppl": math.exp(min(nll, 700.0)),  # exp overflows past 709
               "token_accuracy": correct / tokens, "exact_match": exact / sequences}
    return metrics, predictions


def text_metrics(hypotheses, references) -> dict:
    """Corpus BLEU and chrF (sacreBLEU, 0-100) and character and word error rates (jiwer, 0-1) of decoded text."""
    import jiwer
    import sacrebleu

    scored = [(h, r) for h, r in zip(hypotheses, references) if r.strip()]  # an error rate needs a reference
    hyps, refs = [h for h, _ in scored], [r for _, r in scored]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "cer": jiwer.cer(refs, hyps), "wer": jiwer.wer(refs, hyps)}
