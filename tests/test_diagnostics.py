"""Attention diagnostics (entropy, alignment accuracy) and the run doctor's signatures."""

import json
import logging
import math
import re

import numpy as np
import pytest
import torch

from playground import experiment
from playground.data import EOS, PAD, UNK
from playground.data.batching import TokenPairs
from conftest import build, tiny_model_config
from playground.diagnostics import alignment_accuracy, alignment_targets, attention_entropy, model_summary
from playground.doctor import Doctor, unk_shares


def test_entropy_is_ln_s_for_even_attention_zero_for_one_key_and_ignores_padding_queries():
    weights = torch.zeros(1, 2, 3, 4)
    weights[0, 0] = 0.25  # head 0 spreads evenly over 4 keys
    weights[0, 1, :, 2] = 1.0  # head 1 looks at one key
    weights[0, :, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a padding query, left out below
    entropy = attention_entropy(weights, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(entropy, torch.tensor([math.log(4), 0.0]))


def test_decoder_heatmaps_show_bos_and_the_target_but_not_the_eos_a_shorter_row_reads_as_padding():
    from types import SimpleNamespace

    from playground.data.tokenizers import SymbolTokenizer
    from playground.diagnostics import log_attention

    torch.manual_seed(0)
    tokenizer = SymbolTokenizer(16)
    valid = TokenPairs.from_lists([([5, 6, 7], [7, 6]), ([5, 6, 7, 8], [8, 7, 6, 5])])  # row 0 is the shorter
    data = SimpleNamespace(splits={"valid": valid}, src_tokenizer=tokenizer, tgt_tokenizer=tokenizer)
    shown = {}
    tracker = SimpleNamespace(attention=lambda tag, weights, queries, keys, step: shown.update({tag: (queries, keys)}),
                              scalars=lambda values, step: None)
    log_attention(tracker, build(tiny_model_config(), 20, 20), data, None, torch.device("cpu"), step=1)
    bos, target = tokenizer.piece(1), [tokenizer.piece(i) for i in (7, 6)]
    assert shown["attention/decoder.layers.0.self_attn"] == ([bos, *target], [bos, *target])
    assert shown["attention/decoder.layers.0.cross_attn"][0] == [bos, *target]


def test_alignment_targets_follow_each_task():
    src = torch.tensor([[5, 6, 7, PAD], [8, 8, 9, 4]])
    reverse = alignment_targets("reverse", src, torch.tensor([[7, 6, 5, EOS], [4, 9, 8, 8]]))
    assert reverse.float().argmax(-1)[:, :3].tolist() == [[2, 1, 0], [3, 2, 1]]
    copy = alignment_targets("copy", src, src)
    assert copy.float().argmax(-1).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    sort = alignment_targets("sort", src, torch.tensor([[5, 6, 7, EOS], [4, 8, 8, 9]]))
    assert sort[1, 1].tolist() == [True, True, False, False]  # either 8 will do


def test_a_head_that_looks_where_the_output_comes_from_scores_one_and_one_that_does_not_less():
    src = torch.tensor([[5, 6, 7, 8]])
    tgt_out = torch.tensor([[8, 7, 6, 5, EOS]])
    allowed = alignment_targets("reverse", src, tgt_out)  # (1, 5, 4)
    weights = torch.stack([allowed[0].float(), torch.eye(5, 4)])[None]  # head 0 mirrors, head 1 copies
    outputs = tgt_out != EOS
    torch.testing.assert_close(alignment_accuracy(weights, allowed, outputs), torch.tensor([1.0, 0.0]))


def test_the_logged_alignment_leaves_out_where_the_eos_looks():
    from types import SimpleNamespace

    from playground.data.tokenizers import SymbolTokenizer
    from playground.diagnostics import log_attention

    class Attends(torch.nn.Module):
        """A model whose last cross-attention is the handmade map below."""

        def attention_maps(self, src, tgt_in):
            return {"decoder.layers.0.cross_attn": weights}

    tokenizer = SymbolTokenizer(16)
    valid = TokenPairs.from_lists([([5, 6, 7], [7, 6, 5])])  # reverse: output t comes from source 2 - t
    data = SimpleNamespace(splits={"valid": valid}, src_tokenizer=tokenizer, tgt_tokenizer=tokenizer)
    weights = torch.tensor([[[[0.1, 0.1, 0.8],  # 7 <- source 2: right
                              [0.1, 0.8, 0.1],  # 6 <- source 1: right
                              [0.8, 0.1, 0.1],  # 5 <- source 0: right
                              [0.1, 0.1, 0.8]]]])  # EOS, which comes from no source position: not counted
    logged = {}
    tracker = SimpleNamespace(attention=lambda *args: None, scalars=lambda values, step: logged.update(values))
    result = log_attention(tracker, Attends(), data, "reverse", torch.device("cpu"), step=1)
    torch.testing.assert_close(result["attention_alignment"], 1.0, rtol=0, atol=0)  # 3 of 3, not 3 of 4
    torch.testing.assert_close(logged["attention_alignment/head_0"], 1.0, rtol=0, atol=0)


def fired(run):
    """Run the doctor through `run(doctor)`; return the messages it reported."""
    messages = []
    doctor = Doctor(vocab_size=20, max_steps=100, report=lambda message, step: messages.append(message))
    run(doctor)
    return messages


def test_the_doctor_sees_a_loss_that_stays_at_chance_after_a_fifth_of_the_run_but_not_in_a_smoke_test():
    chance = math.log(20)
    assert fired(lambda d: (d.on_log(5, chance, []), d.on_log(10, chance, []))) == []  # too early to say
    assert fired(lambda d: (d.on_log(20, chance, []), d.on_log(30, 0.9 * chance, []))) == []  # learning
    assert fired(lambda d: d.on_log(30, chance, [])) == []  # one window: its mean holds the first steps too
    # label smoothing can put the loss above ln(V)
    [message] = fired(lambda d: (d.on_log(20, chance, []), d.on_log(30, 1.2 * chance, [])))
    assert message.startswith("doctor: train/loss 3.595 at step 30 of 100 is still above 95% of ln(V) = 2.996")
    assert "optimizer.lr" in message and "scheduler.warmup_steps" in message
    smoke = Doctor(vocab_size=20, max_steps=10, report=lambda message, step: pytest.fail(message))
    smoke.on_log(5, chance, [])
    smoke.on_log(10, chance, [])  # 10 steps of 10: too few to expect learning


def test_the_doctor_sees_decoding_fail_where_teacher_forcing_succeeds():
    [message] = fired(lambda d: d.on_eval(50, {"token_accuracy": 0.95, "exact_match": 0.0, "bleu": 30.0}))
    assert "valid/exact_match 0" in message and "causal mask" in message
    [message] = fired(lambda d: d.on_eval(50, {"token_accuracy": 0.6, "exact_match": 0.0, "bleu": 0.4}))
    assert "valid/bleu 0.40" in message
    assert fired(lambda d: d.on_eval(50, {"token_accuracy": 0.6, "exact_match": 0.0, "bleu": 12.0})) == []
    assert fired(lambda d: d.on_eval(50, {"token_accuracy": 0.95, "exact_match": 0.4, "bleu": 80.0})) == []


def evaluations(doctor, valid_losses, train_losses):
    for step, (valid, train) in enumerate(zip(valid_losses, train_losses)):
        doctor.on_log(step, train, [])
        doctor.on_eval(step, {"loss": valid})


def test_the_doctor_sees_overfitting_a_valid_loss_rising_three_times_while_the_train_loss_falls():
    [message] = fired(lambda d: evaluations(d, [2.0, 1.5, 1.6, 1.7, 1.8], [2.0, 1.4, 1.2, 1.0, 0.8]))
    assert "valid/loss rose from 1.500 to 1.800" in message and "model.dropout" in message
    assert fired(lambda d: evaluations(d, [2.0, 1.5, 1.6, 1.7, 1.6], [2.0, 1.4, 1.2, 1.0, 0.8])) == []  # 2 rises
    assert fired(lambda d: evaluations(d, [2.0, 1.5, 1.6, 1.7, 1.8], [2.0, 1.4, 1.5, 1.6, 1.7])) == []  # both rise
    flat = [0.700, 0.7001, 0.7002, 0.7003]  # noise at the floor is not overfitting
    assert fired(lambda d: evaluations(d, flat, [0.8, 0.7, 0.6, 0.5])) == []


def test_the_doctor_sees_a_gradient_norm_ten_times_its_running_median():
    [message] = fired(lambda d: d.on_log(70, 1.0, [1.0] * 60 + [15.0]))
    assert "15x the median" in message and "trainer.grad_clip" in message
    assert fired(lambda d: d.on_log(70, 1.0, [1.0] * 60 + [8.0])) == []
    assert fired(lambda d: d.on_log(70, 1.0, [1.0] * 20 + [15.0])) == []  # too little history to judge


def test_the_doctor_sees_a_vocabulary_that_maps_too_many_tokens_to_unk():
    pairs = [([4, 5, UNK, 6], [4, 5, 6]), ([4] * 10, [5] * 10)]
    shares = unk_shares(TokenPairs.from_lists(pairs))
    assert shares == {"source": pytest.approx(1 / 14), "target": 0.0}
    [message] = fired(lambda d: d.check_data(shares))
    assert message.startswith("doctor: 7.1% of the source training tokens are <unk>") and "vocab_size" in message
    assert fired(lambda d: d.check_data({"source": 0.01, "target": 0.0})) == []


def test_a_run_that_cannot_learn_is_told_so_and_off_a_terminal_progress_is_a_plain_line_every_log_every_steps(
        compose_config, tmp_path, caplog, capfd):
    cfg = compose_config("optimizer.lr=1e-9", "trainer.max_steps=20", "trainer.log_every=5", "trainer.eval_every=20",
                         "dataset.num_train=500", "dataset.num_valid=50", "dataset.num_test=50", "trainer.device=cpu")
    with caplog.at_level(logging.INFO, logger="playground"):
        flat = experiment.run_train(cfg, tmp_path)  # trainer.progress=auto, and pytest's output is not a terminal
    assert flat["doctor"] == "not learning"
    assert json.loads((tmp_path / "metrics.json").read_text())["doctor"] == "not learning"
    assert any(r.message.startswith("doctor: train/loss") for r in caplog.records)
    lines = [r.message for r in caplog.records if r.name == "playground.train"]
    assert [line.split(":")[0] for line in lines] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert all(re.search(r"train/loss \d\.\d{4}, lr .*, [\d,]+ tokens/s, ETA \d+:\d\d:\d\d$", line) for line in lines)
    captured = capfd.readouterr()
    assert "\r" not in captured.err + captured.out  # no bar redrawn in place


def test_the_model_summary_gives_each_modules_parameters_and_output_shape():
    model = build(tiny_model_config(), 20, 20)
    table = model_summary(model, torch.randint(4, 20, (3, 7)), torch.randint(4, 20, (3, 5)))
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert f"| encoder | Encoder | {encoder:,} | 3 x 7 x 32 |" in table
    assert "| &nbsp;&nbsp;&nbsp;&nbsp;decoder.layers.1 | DecoderLayer |" in table
    assert "| generator | Linear | 20 | 3 x 5 x 20 |" in table  # its weight is the target embedding's: counted there
    assert f"| total | Transformer | {sum(p.numel() for p in model.parameters()):,} | |" in table


def test_the_notebook_tour_runs_to_the_end_as_a_script(monkeypatch, tmp_path, capsys):
    import runpy
    import tempfile

    from conftest import ROOT

    # the tour's runs, shortened: what is tested is that every cell runs
    monkeypatch.setenv("TOUR_OVERRIDES", "trainer.max_steps=20 model.d_model=32 model.d_ff=64 dataset.num_train=300 "
                                         "dataset.num_valid=20 dataset.num_test=20")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runpy.run_path(str(ROOT / "docs" / "tour.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "test/exact_match" in out and "Both runs are TensorBoard runs" in out
    assert len(list(tmp_path.glob("playground-tour-*/cross_attention.png"))) == 1


def test_the_unk_share_of_a_large_corpus_is_estimated_from_a_sample_that_touches_little_of_it():
    rng = np.random.default_rng(0)
    src = rng.integers(3, 9, 1_000_000).astype(np.uint16)
    src[rng.random(len(src)) < 0.03] = UNK  # 3% of the source
    tgt = np.full(1_000_000, 7, dtype=np.uint16)
    offsets = np.arange(0, 1_000_001, 10, dtype=np.int64)  # 100,000 pairs of 10 tokens
    split = TokenPairs(src, offsets, tgt, offsets)
    exact = np.count_nonzero(src == UNK) / len(src)
    source, target = split.share(UNK, at_most=1 << 16)  # reads 65,536 ids a side of 1,000,000
    assert source == pytest.approx(exact, abs=0.003) and source != exact and target == 0.0
    assert split.share(UNK, at_most=len(src)) == (exact, 0.0)


def test_the_doctors_thresholds_fire_at_their_edges():
    chance = math.log(20)
    assert len(fired(lambda d: (d.on_log(20, chance, []), d.on_log(30, 0.97 * chance, [])))) == 1  # above 95%
    assert len(fired(lambda d: d.on_eval(50, {"token_accuracy": 0.5, "bleu": 0.5}))) == 1  # half right, no BLEU
    assert len(fired(lambda d: d.check_data({"source": 0.0, "target": 0.019}))) == 0  # under 2% <unk>: fine
    assert len(fired(lambda d: d.check_data({"source": 0.0, "target": 0.03}))) == 1  # 3%: too many
