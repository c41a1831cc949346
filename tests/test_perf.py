"""perf/mfu counts the model FLOPs of the model that is actually built."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import build
from playground.perf import matmul_peak, training_flops


@pytest.mark.parametrize("key_dim", [None, 8])
def test_training_flops_are_three_times_two_flops_per_linear_weight_per_token_plus_attention(key_dim):
    cfg = SimpleNamespace(d_model=64, heads=4, enc_layers=2, dec_layers=3, d_ff=96, dropout=0.0, norm_position="post",
                          norm="layernorm", final_norm=False, positional="sinusoidal", activation="relu",
                          tie_embeddings="none", max_len=64, key_dim=key_dim)
    model = build(cfg, 50, 70)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    B, L = 5, 12  # with equal source and target lengths every linear weight meets every token once
    attention_modules = cfg.enc_layers + 2 * cfg.dec_layers
    qk = key_dim * cfg.heads if key_dim else cfg.d_model  # QK^T multiplies d_k-wide rows, AV d_v-wide ones
    forward = 2 * B * L * linear_weights + attention_modules * 2 * B * L * L * (qk + cfg.d_model)
    assert training_flops(64, 96, 2, 3, 70, B, L, L, qk_width=key_dim and qk) == 3 * forward


def test_the_matmul_peak_is_a_positive_rate_and_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    peak = matmul_peak(torch.device("cpu"), torch.float32, seconds=0.05)
    assert peak > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s
    assert torch.equal(torch.rand(3), expected)


def test_the_benchmark_stack_starts_at_the_reference_model_and_ends_at_the_fast_one():
    from playground import bench

    size = dict(d_model=16, heads=2, layers=1, d_ff=32, vocab=40, batch=2, length=4)
    classes = lambda model: [type(module) for module in model.modules()]  # noqa: E731
    assert classes(bench.stacked_model(size, set())) == classes(bench.playground_model(size, kernels="reference"))
    every_piece = {piece for _, piece in bench.STACK if piece not in (None, "loss")}
    stacked, fast = bench.stacked_model(size, every_piece), bench.playground_model(size, kernels="fast")
    assert classes(stacked)[1:] == classes(fast)[1:]  # every piece a training step runs
    assert type(fast).decode is not type(stacked).decode  # the whole model's fast class changes decoding only
    assert bench.STACK[-1][1] == "loss"  # the last rung adds the blockwise loss: trainer.kernels=fast in full


def test_the_benchmark_beam_searches_nn_transformer_with_the_playground_search_recomputing_each_prefix(seeded):
    from playground import bench
    from playground.model.decoding import beam_search

    theirs = bench.TorchTransformer(40, 16, 2, 1, 32, dropout=0.0).eval()
    with torch.no_grad():
        theirs.generator.bias[bench.EOS] = -1e4  # as in the benchmark: every hypothesis runs to the limit
    src = torch.randint(4, 40, (3, 5))
    ids, _ = beam_search(bench.RecomputingBeams(theirs), src, 6, beam_size=1)
    assert torch.equal(ids[:, 0], theirs.generate_recomputing(src, 6))  # one beam: its greedy decoding
    ids, scores = beam_search(bench.RecomputingBeams(theirs), src, 6, beam_size=3, length_penalty=0.0)
    # each prefix reordered with its beam: a hypothesis's score is what teacher forcing gives it
    best = ids[:, 0]  # (B, 6)
    with torch.no_grad():
        tgt_in = torch.cat([torch.full((3, 1), bench.BOS), best[:, :-1]], dim=1)
        log_prob = theirs(src, tgt_in).log_softmax(-1).gather(-1, best[..., None]).sum((1, 2))
    torch.testing.assert_close(scores[:, 0], log_prob)


@pytest.mark.parametrize("module, argv", [("bench", ["--device", "cuda"]),
                                          ("bench", ["--only", "translate", "--device", "cuda"]),
                                          ("bench_translate", ["--device", "cuda"])])
def test_a_benchmark_asked_for_a_device_this_machine_lacks_says_so_in_one_line_and_exits_2(module, argv, monkeypatch,
                                                                                             capsys):
    import importlib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"playground.{module}").main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: --device cuda: this machine has no cuda device (try --device cpu)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--only", "train"], ["--stack"], ["--profile"]])
def test_a_benchmark_of_bf16_only_on_a_cpu_without_it_says_why_in_one_line_and_exits_2(argv, monkeypatch, capsys):
    from playground import bench, setup

    monkeypatch.setattr(bench, "cpu_computes_bf16", lambda: False)  # what an AVX2-only CPU reports
    monkeypatch.setattr(bench, "cpu_bf16_missing", lambda: setup.NO_BF16_UNITS)
    for measure in ("bench_training", "bench_stack", "bench_profile"):
        monkeypatch.setattr(bench, measure, lambda *a: pytest.fail("measured nothing, as if it had measured"))
    with pytest.raises(SystemExit) as exit_:
        bench.main([*argv, "--device", "cpu", "--precision", "bf16", "--size", "d256"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("error: --precision bf16: this CPU has no bf16 units (no AVX512-BF16 or AMX): "
                                         "emulated, it runs ~20x slower than fp32 (try --precision fp32)")
    assert "Traceback" not in err


def test_the_translate_benchmark_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from playground import bench_translate

    with pytest.raises(SystemExit) as exit_:
        bench_translate.main(["--ckpt", str(tmp_path / "missing.pt")])
    assert exit_.value.code == 2
    assert "missing.pt" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv, message", [(["--lines", "0"], "--lines 0: at least 1"),
                                           (["--lines", "-3"], "--lines -3: at least 1"),
                                           (["--batch-size", "0"], "--batch-size 0: at least 1"),
                                           (["--rounds", "0"], "--rounds 0: at least 1"),
                                           (["--input", "EMPTY"], "no line to translate (the file is empty or blank)")])
def test_the_translate_benchmark_refuses_a_count_below_one_or_an_empty_input_before_any_work(argv, message, tmp_path,
                                                                                             capsys, monkeypatch):
    from playground import bench_translate

    (tmp_path / "empty.txt").write_text("\n  \n")
    monkeypatch.setattr(bench_translate, "train_default", lambda *_: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit) as exit_:
        bench_translate.main([a.replace("EMPTY", str(tmp_path / "empty.txt")) for a in argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_the_translate_benchmark_refuses_fp16_on_a_cpu_in_one_line_before_training(tmp_path, capsys, monkeypatch):
    from playground import bench_translate

    monkeypatch.setattr(bench_translate, "train_default", lambda *_: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit) as exit_:
        bench_translate.main(["--device", "cpu", "--precision", "fp16"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: trainer.precision=fp16 needs trainer.device=cuda (on cpu, use " in err.splitlines()[-1]
    assert "Traceback" not in err
