"""mode=translate and mode=score on a small checkpoint: files and lines in, outputs in input order out."""

import io
import math
import os
import random
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT
from playground import experiment, inference
from playground.data import BOS, EOS, MODEL_IDS
from playground.data.tokenizers import SymbolTokenizer
from playground.errors import UserError
from playground.model import build_model

MAX_LEN = 24  # the checkpoint's positions: a longer input line is cut


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained for 150 steps on the reverse task: right on some inputs, wrong on others."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model.d_model=32", "model.d_ff=64", "model.heads=2", "model.enc_layers=1", "model.dec_layers=1",
            f"model.max_len={MAX_LEN}", "dataset.max_len=8",
            "dataset.num_train=3000", "dataset.num_valid=50", "dataset.num_test=50", "trainer.max_steps=150",
            "trainer.eval_every=150", "trainer.precision=fp32", "trainer.device=cpu"])
    run_dir = tmp_path_factory.mktemp("run")
    experiment.run_train(cfg, run_dir)
    path = run_dir / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    model = build_model(cfg.model, 20, 20, **MODEL_IDS)
    model.load_state_dict(state["model"])
    return path, model.eval()


@pytest.fixture
def translate(checkpoint, compose_config, tmp_path):
    """Run mode=translate (or mode=score) in-process on input lines; return the output file's lines."""
    def _run(lines, *overrides, mode="translate", name="out.txt"):
        source = tmp_path / f"in-{name}"
        source.write_bytes("".join(line + "\n" for line in lines).encode())
        cfg = compose_config(f"mode={mode}", f"ckpt_path={checkpoint[0]}", f"input_file={source}",
                             f"output_file={tmp_path / name}", "trainer.precision=fp32", *overrides)
        (inference.run_score if mode == "score" else inference.run_translate)(cfg)
        return (tmp_path / name).read_text().splitlines()
    return _run


def random_lines(n, seed=0, longest=20):
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(16)) for _ in range(rng.randint(1, longest))) for _ in range(n)]


def test_a_thousand_lines_translated_in_batches_equal_the_lines_translated_one_by_one(translate):
    lines = random_lines(1000, longest=10)
    batched = translate(lines, "decode.batch_size=64", name="batched.txt")
    one_by_one = translate(lines, "decode.batch_size=1", name="single.txt")
    assert len(batched) == 1000
    assert batched == one_by_one
    assert len(set(batched)) > 100  # the outputs differ from line to line: a mix-up of the order would show


def test_empty_crlf_whitespace_and_overlong_lines(translate, capsys):
    long_line, longer_line = " ".join(["5"] * 30), " ".join(["6", "7"] * 20)
    out = translate(["3 1 4\r", "", "   \t ", "  3 1 4  ", long_line, longer_line, "3 1 4"])
    assert len(out) == 7
    assert out[0] == out[3] == out[6]  # \r and the whitespace around a line are stripped, as in training
    assert out[1] == out[2] == ""  # nothing in, nothing out
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 input lines longer than {MAX_LEN} tokens (the model's positions, model.max_len) "
                        f"were cut to {MAX_LEN} tokens"]
    assert out[4] == translate([" ".join(["5"] * MAX_LEN)], name="cut.txt")[0]


def test_a_file_is_split_into_lines_at_newlines_only_as_training_reads_it(translate):
    out = translate(["3 1\x0c4", "5\u2028 6", "7"])  # a form feed and a line separator inside lines
    assert len(out) == 3


def test_nbest_prints_n_scored_hypotheses_per_input_best_first_the_first_being_the_beams_choice(translate):
    lines = random_lines(12, seed=1, longest=8)
    nbest = translate(lines, "decode=beam", "decode.nbest=3", name="nbest.txt")
    best = translate(lines, "decode=beam", name="beam.txt")
    assert len(nbest) == 3 * len(lines)
    for i, line in enumerate(lines):
        rows = [row.split("\t") for row in nbest[3 * i: 3 * i + 3]]
        assert [tag for tag, _, _ in rows] == [f"H-{i}"] * 3
        scores = [float(score) for _, score, _ in rows]
        assert scores == sorted(scores, reverse=True)
        assert len({text for _, _, text in rows}) == 3
        assert rows[0][2] == best[i]


def log_probability(model, source_ids, target_ids):
    """The model's log-probability of target (EOS appended) given source, one pair, teacher-forced."""
    src = torch.tensor([source_ids])
    tgt = torch.tensor([[BOS, *target_ids, EOS]])
    with torch.no_grad():
        logp = model(src, tgt[:, :-1]).log_softmax(-1)  # (1, T, V)
    return logp[0].gather(-1, tgt[0, 1:, None]).sum().item()


def test_score_writes_each_pairs_teacher_forced_log_probability_and_nll_per_token(translate, checkpoint, capsys):
    _, model = checkpoint
    sources, references = random_lines(40, seed=2, longest=12), random_lines(40, seed=3, longest=12)
    out = translate([f"{s}\t{r}" for s, r in zip(sources, references)], mode="score", name="scores.tsv")
    tokenizer = SymbolTokenizer(16)
    for line, source, reference in zip(out, sources, references):
        log_prob, nll = map(float, line.split("\t"))
        expected = log_probability(model, tokenizer.encode(source), tokenizer.encode(reference))
        assert log_prob == pytest.approx(expected, abs=2e-4)
        assert nll == pytest.approx(-expected / (len(reference.split()) + 1), abs=2e-4)
    assert "scored 40 pairs" in capsys.readouterr().err


def test_score_reads_references_from_their_own_file_as_well(translate, tmp_path):
    sources, references = random_lines(10, seed=4), random_lines(10, seed=5)
    (tmp_path / "ref.txt").write_text("\n".join(references) + "\n")
    separate = translate(sources, f"reference_file={tmp_path / 'ref.txt'}", mode="score", name="a.tsv")
    together = translate([f"{s}\t{r}" for s, r in zip(sources, references)], mode="score", name="b.tsv")
    assert separate == together


def test_score_reports_the_corpus_nll_as_all_pairs_log_probabilities_over_all_their_target_tokens(translate, capsys):
    sources = random_lines(12, seed=10, longest=10)
    references = random_lines(12, seed=11, longest=20)  # 1 to 20 tokens: a mean over pairs would weigh them alike
    out = translate([f"{s}\t{r}" for s, r in zip(sources, references)], mode="score", name="corpus.tsv")
    log_probs = [float(line.split("\t")[0]) for line in out]
    tokens = sum(len(r.split()) + 1 for r in references)  # EOS counted once a pair
    nll = -sum(log_probs) / tokens
    summary = re.search(r"^scored 12 pairs, (\d+) target tokens \(EOS included\): NLL ([\d.]+) nats a token, "
                        r"perplexity ([\d.]+)$", capsys.readouterr().err, re.M)
    assert int(summary[1]) == tokens
    # each pair's log-probability is printed to 4 decimals, the corpus NLL to 4 and the perplexity to 2
    torch.testing.assert_close(float(summary[2]), nll, rtol=0, atol=2e-4)
    torch.testing.assert_close(float(summary[3]), math.exp(nll), rtol=1e-3, atol=0.01)


def test_score_cuts_a_reference_to_the_positions_left_after_bos_and_says_so(translate, checkpoint, capsys):
    _, model = checkpoint
    fits = " ".join((["5", "6"] * MAX_LEN)[: MAX_LEN - 1])  # MAX_LEN - 1 tokens: BOS and these fill the positions
    out = translate([f"3 1 4\t{fits}", f"3 1 4\t{fits} 7"], mode="score", name="long.tsv")
    (kept, kept_nll), (cut, cut_nll) = [map(float, line.split("\t")) for line in out]
    tokenizer = SymbolTokenizer(16)
    expected = log_probability(model, tokenizer.encode("3 1 4"), tokenizer.encode(fits))
    torch.testing.assert_close(kept, expected, rtol=0, atol=2e-4)  # printed to 4 decimals
    torch.testing.assert_close(cut, kept, rtol=0, atol=0)  # the token past the positions is dropped: the same pair
    torch.testing.assert_close(cut_nll, -expected / MAX_LEN, rtol=0, atol=2e-4)  # MAX_LEN - 1 tokens and EOS
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 1 reference line longer than {MAX_LEN - 1} tokens (the model's positions, "
                        f"model.max_len) was cut to {MAX_LEN - 1} tokens"]


@pytest.mark.parametrize("overrides, message", [
    (["decode.beam_size=2", "decode.nbest=3"], "decode.nbest=3 is more than decode.beam_size=2"),
    (["decode.sampling=true", "decode.temperature=0"], "decode.temperature=0.0 must be positive"),
    (["decode.sampling=true", "decode.top_p=0"], r"decode.top_p=0.0 must be in \(0, 1\]"),
    (["decode.sampling=true", "decode.top_p=1.5"], r"decode.top_p=1.5 must be in \(0, 1\]"),
    (["decode.top_k=-1"], "decode.top_k=-1 must be 0 or more"),
    (["decode.sampling=true", "decode.beam_size=4"], "decode.sampling=true draws one sequence per input"),
    (["trainer.beam_size=4"], "trainer.beam_size is now decode.beam_size: write decode.beam_size=4"),
    (["trainer.length_penalty=1.0"], "trainer.length_penalty is now decode.length_penalty"),
    (["input_file=MISSING"], "input_file=.*missing.txt: no such file"),
    (["output_file=EXISTING"], "output_file=.*existing.txt exists: refusing to overwrite it"),
    (["text=3 1 4", "input_file=EXISTING"], "text= and input_file= are both given"),
    (["mode=score", "input_file=EXISTING"], r"existing.txt line 1: expected \"source<TAB>reference\""),
    (["mode=score", "input_file=EXISTING", "reference_file=TWO"], "has 2 lines and input_file=.* 1"),
    (["mode=score", "input_file=TABS"], r"tabs.tsv line 2: expected \"source<TAB>reference\", found 2 TABs"),
    (["mode=score"], "mode=score needs input_file=PATH"),
    (["output_file=FOLDER"], "output_file=.* is a folder: give a file"),
    (["input_file=EXISTING", "output_file=EXISTING", "overwrite=true"], "output_file=.*existing.txt is the input_file: "
                                                                        "the outputs would replace what they are made"),
    (["text=3 1 4", "output_file=CKPT", "overwrite=true"], "output_file=.*best.pt is the ckpt_path: the outputs would "
                                                           "replace what they are made from"),  # not the checkpoint
    (["decode.beam_size=19"], "decode.beam_size=19 is more than the 18 tokens an output can start with"),
    (["input_file=LATIN1"], "latin1.txt line 2: not UTF-8 text"),
])
def test_bad_translate_and_score_settings_are_refused_by_name(checkpoint, compose_config, tmp_path, overrides,
                                                              message):
    existing, two = tmp_path / "existing.txt", tmp_path / "two.txt"
    existing.write_text("3 1 4\n")
    two.write_text("1\n2\n")
    (tmp_path / "latin1.txt").write_bytes("3 1\nè più\n".encode("latin-1"))
    (tmp_path / "tabs.tsv").write_text("3 1\t1 3\n3 1\t1 3\t0.5\n")  # a third column: not part of the reference
    names = {"MISSING": tmp_path / "missing.txt", "EXISTING": existing, "TWO": two, "FOLDER": tmp_path,
             "LATIN1": tmp_path / "latin1.txt", "TABS": tmp_path / "tabs.tsv", "CKPT": checkpoint[0]}
    overrides = [o.split("=")[0] + "=" + str(names.get(o.split("=")[1], o.split("=")[1])) for o in overrides]
    mode = "mode=score" if "mode=score" in overrides else "mode=translate"
    cfg = compose_config(mode, f"ckpt_path={checkpoint[0]}", *[o for o in overrides if not o.startswith("mode=")])
    with pytest.raises(UserError, match=message):
        (inference.run_score if cfg.mode == "score" else inference.run_translate)(cfg)
    assert existing.read_text() == "3 1 4\n"  # an output_file that exists is left as it was


def test_overwrite_true_replaces_an_existing_output_file_with_the_new_outputs(translate, tmp_path):
    (tmp_path / "out.txt").write_text("an old output\n" * 5)
    lines = random_lines(3, seed=12, longest=6)
    assert translate(lines, "overwrite=true") == translate(lines, name="fresh.txt")  # all of it, nothing old left


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_standard_input_on_a_terminal_is_translated_line_by_line_after_a_prompt(checkpoint, compose_config,
                                                                                monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", Terminal("3 1 4\n\n2 7\n"))
    inference.run_translate(compose_config("mode=translate", f"ckpt_path={checkpoint[0]}", "trainer.precision=fp32"))
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3 and captured.out.splitlines()[1] == ""
    assert captured.err.count("> ") == 4  # one prompt per line, and one more before Ctrl-D (end of input)


def test_piped_standard_input_is_read_in_buffers_of_the_batch_size(checkpoint, compose_config, monkeypatch, capsys,
                                                                   translate):
    lines = random_lines(50, seed=6, longest=8)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    inference.run_translate(compose_config("mode=translate", f"ckpt_path={checkpoint[0]}", "trainer.precision=fp32",
                                           "decode.batch_size=16"))
    assert capsys.readouterr().out.splitlines() == translate(lines, name="piped.txt")


def test_nbest_tags_number_the_input_lines_across_the_buffers_standard_input_is_read_in(checkpoint, compose_config,
                                                                                     monkeypatch, capsys, translate):
    lines = random_lines(5, seed=13, longest=6)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    inference.run_translate(compose_config("mode=translate", f"ckpt_path={checkpoint[0]}", "trainer.precision=fp32",
                                           "decode=beam", "decode.nbest=2", "decode.batch_size=2"))  # 3 buffers
    piped = capsys.readouterr().out.splitlines()
    assert [row.split("\t")[0] for row in piped] == [f"H-{i}" for i in range(5) for _ in range(2)]
    assert piped == translate(lines, "decode=beam", "decode.nbest=2", name="nbest-file.txt")  # one buffer


def test_the_python_api_translates_any_text_as_the_command_line_prints_it_and_scores_and_attends(checkpoint, tmp_path):
    import playground

    text = "3 1, 4 it's è più! 7 2"  # a comma, an apostrophe, accents: text= needs no Hydra quoting
    printed = subprocess.run([sys.executable, str(ROOT / "transformer_playground.py"), "mode=translate",
                              f"ckpt_path={checkpoint[0]}", f"text={text}", "trainer.device=cpu"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time> folder
    trained = playground.load(checkpoint[0], device="cpu")
    assert trained.translate([text]) == printed.stdout.splitlines()
    lines = random_lines(30, seed=7, longest=8)
    nbest = trained.translate(lines[:2], beam_size=3, nbest=2)
    assert [len(hypotheses) for hypotheses in nbest] == [2, 2] and nbest[0][0][0] >= nbest[0][1][0]
    [(log_prob, nll)] = trained.score(["3 1 4"], ["4 1 3"])
    assert nll == pytest.approx(-log_prob / 4)
    maps = trained.attention("3 1 4", "4 1 3")
    assert maps["decoder.layers.0.cross_attn"].shape == (2, 4, 3)  # heads, BOS + 3 target tokens, 3 source tokens
    with pytest.raises(UserError, match="decode.nbest=3 is more than decode.beam_size=1"):
        trained.translate(lines, nbest=3)


def test_the_python_api_warns_as_the_command_line_does_when_it_cuts_a_text_longer_than_the_models_positions(
        checkpoint, capsys):
    import playground

    trained = playground.load(checkpoint[0], device="cpu")
    long_text, cut_text = " ".join(["5"] * (MAX_LEN + 6)), " ".join(["5"] * (MAX_LEN - 1))
    assert trained.score([long_text], [long_text]) == trained.score([long_text], [cut_text])  # the cut text is scored
    err = capsys.readouterr().err
    assert (f"warning: 1 source line longer than {MAX_LEN} tokens (the model's positions, model.max_len) was cut to "
            f"{MAX_LEN} tokens") in err
    assert f"warning: 1 target line longer than {MAX_LEN - 1} tokens" in err
    trained.translate([long_text, "3 1 4"])
    assert capsys.readouterr().err == (f"warning: 1 input line longer than {MAX_LEN} tokens (the model's positions, "
                                       f"model.max_len) was cut to {MAX_LEN} tokens\n")
    trained.score(["3 1 4"], ["4 1 3"])
    trained.translate(["3 1 4"])
    assert capsys.readouterr().err == ""  # nothing cut, nothing said


def test_the_python_api_loads_a_model_with_the_fast_kernels_in_a_fresh_process_and_translates_as_the_reference(
        checkpoint):
    import playground

    lines = random_lines(5, seed=3, longest=8)
    code = (f"import playground; t = playground.load({str(checkpoint[0])!r}, device='cpu', precision='fp32', "
            f"kernels='fast'); print(type(t.model).__name__); print(*t.translate({lines!r}, beam_size=2), sep='\\n')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name, *outputs = done.stdout.splitlines()
    assert name == "FastTransformer"
    assert outputs == playground.load(checkpoint[0], device="cpu", precision="fp32").translate(lines, beam_size=2)
    with pytest.raises(UserError, match=r"^trainer.kernels=quick is not one of: reference, fast$"):
        playground.load(checkpoint[0], device="cpu", kernels="quick")
    with pytest.raises(UserError, match=r"^load\(\.\.\., device=device\(type='cpu'\)\): give its name, as "
                                        r"trainer.device takes it \(auto, cpu, cuda, mps\)$"):
        playground.load(checkpoint[0], device=torch.device("cpu"))


@pytest.mark.parametrize("call, message", [
    (lambda t: t.translate("3 1 4"), r"^translate\(lines\) takes a list of texts, not one text: write \['3 1 4'\]$"),
    (lambda t: t.translate([3, 1]), r"takes texts, and one item is a int: 3$"),
    (lambda t: t.translate(["3 1"], beam=4), r"^translate\(\.\.\., beam=\.\.\.\): not a decode setting \(they are: "
                                             r"beam_size, "),
    (lambda t: t.translate(["3 1"], beam_size="two"), r"^translate\(\.\.\., beam_size='two'\): Value 'two' of type "
                                                     r"'str' could not be converted to Integer$"),
    (lambda t: t.translate(["3 1"], beam_size=2.5), r"^translate\(\.\.\., beam_size=2.5\): .* converted to Integer$"),
    (lambda t: t.translate(["3 1"], max_len_b=1.5), r"^translate\(\.\.\., max_len_b=1.5\): "),
    (lambda t: t.translate(["3 1"], sampling=True, top_k=2.5), r"^translate\(\.\.\., top_k=2.5\): "),
    (lambda t: t.translate(["3 1"], max_len_a=None), r"^translate\(\.\.\., max_len_a=None\): "),
    (lambda t: t.score(["3 1", "4"], ["1 3"]), r"^score: 2 sources but 1 targets"),
    (lambda t: t.score(["3 1"], ["1 3"], batch_size=-1), r"^score\(\.\.\., batch_size=-1\): the pairs scored together, "
                                                         r"a positive whole number$"),
    (lambda t: t.score(["3 1"], ["1 3"], batch_size=2.0), r"^score\(\.\.\., batch_size=2.0\): "),
    (lambda t: t.score("3 1", "1 3"), r"^score\(sources, \.\.\.\) takes a list of texts"),
    (lambda t: t.attention("", ""), r"^attention\(source, target\) takes two texts, the source not empty$"),
    (lambda t: t.attention(" ".join("1" * (MAX_LEN + 1)), "1"), rf"^attention\(source, \.\.\.\): 25 tokens, more than the "
                                                             rf"model's {MAX_LEN} positions \(model.max_len\)$"),
    (lambda t: t.attention("1", " ".join("1" * MAX_LEN)), rf"^attention\(\.\.\., target\): 24 tokens and BOS, more than "
                                                         rf"the model's {MAX_LEN} positions \(model.max_len\)$")])
def test_a_mistake_in_the_python_api_is_a_user_error_naming_it(checkpoint, call, message):
    import playground

    with pytest.raises(UserError, match=message):
        call(playground.load(checkpoint[0], device="cpu"))


def test_the_python_api_refuses_a_misspelt_override_or_a_bad_value_in_one_line_leaving_no_folder(tmp_path):
    import playground

    with pytest.raises(UserError, match=r"^Could not override 'model.hedas': Key 'hedas' not in 'ModelConfig' \(did "
                                        r"you mean model.heads\?\)$"):
        playground.run(["model.hedas=3"], tmp_path / "a")
    with pytest.raises(UserError, match=r"^model.heads=7 does not divide model.d_model=128"):
        playground.run(["model.heads=7"], tmp_path / "runs" / "b")
    # what the command line reads and this call would not: Hydra's settings, another mode
    with pytest.raises(UserError, match=r"^hydra.run.dir=.*: playground.run does not go through Hydra's run settings, so "
                                        r"it would be ignored \(give the folder with run_dir=...\)$"):
        playground.run([f"hydra.run.dir={tmp_path}/c", "trainer.max_steps=2"])
    with pytest.raises(UserError, match=r"^hydra/launcher=joblib: .* \(run the command line for it\)$"):
        playground.run(["hydra/launcher=joblib"], tmp_path / "d")
    with pytest.raises(UserError, match=r"^mode=eval: playground.run trains; for the other modes use playground.load"):
        playground.run(["mode=eval", "ckpt_path=x.pt"], tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


def test_the_python_api_refuses_a_run_directory_that_holds_a_run_or_is_a_file_leaving_it_as_it_was(tmp_path):
    import playground

    used = tmp_path / "eval"  # what mode=eval leaves: its metrics.json must not be replaced
    used.mkdir()
    (used / "metrics.json").write_text('{"test/bleu": 12.5}\n')
    with pytest.raises(UserError, match=r"eval already holds a run \(metrics.json\): refusing to write into it"):
        playground.run(["trainer.max_steps=2"], used)
    assert [p.name for p in used.iterdir()] == ["metrics.json"]
    assert (used / "metrics.json").read_text() == '{"test/bleu": 12.5}\n'
    (tmp_path / "file.tsv").write_text("a\tb\n")
    with pytest.raises(UserError, match=r"^run_dir=.*file.tsv is a file, not a folder: give the run a folder$"):
        playground.run(["trainer.max_steps=2"], tmp_path / "file.tsv")
    with pytest.raises(UserError, match=r"^run_dir=.*file.tsv/run cannot be made \(Not a directory\)"):
        playground.run(["trainer.max_steps=2"], tmp_path / "file.tsv" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "file.tsv"]


def test_the_python_api_runs_an_experiment_and_returns_its_metrics_and_folder(tmp_path):
    import playground

    metrics, run_dir = playground.run(["trainer.max_steps=10", "trainer.eval_every=10", "dataset.num_train=500",
                                       "dataset.num_valid=50", "dataset.num_test=50", "trainer.device=cpu"],
                                      tmp_path / "run")
    assert run_dir == tmp_path / "run" and metrics["last_step"] == 10
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    # the run directory holds its record as a command line run's does: the config, and the log with the final metrics
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 10
    log = (run_dir / "transformer_playground.log").read_text()
    assert "test/exact_match" in log and "model: " in log


def test_an_exported_folder_holds_no_pickle_and_evaluates_and_translates_as_its_checkpoint(checkpoint, compose_config,
                                                                                         tmp_path):
    import playground
    from playground import export

    folder = export.run_export(compose_config("mode=export", f"ckpt_path={checkpoint[0]}"), tmp_path / "x")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer_src.json",
                                                        "tokenizer_tgt.json"]
    for path in folder.iterdir():  # neither a pickle (0x80) nor torch.save's zip archive
        assert not path.read_bytes().startswith((b"\x80", b"PK")), path
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # readable as the files beside it
    evaluated = [experiment.run_eval(compose_config("mode=eval", f"ckpt_path={path}", "trainer.precision=fp32",
                                                    "trainer.device=cpu"), tmp_path / name)
                 for path, name in ((checkpoint[0], "from_checkpoint"), (folder, "from_folder"))]
    assert evaluated[0] == evaluated[1]
    lines = random_lines(20, seed=8, longest=8)
    assert playground.load(folder, device="cpu").translate(lines) == \
        playground.load(checkpoint[0], device="cpu").translate(lines)


def test_an_exported_folder_whose_weights_lack_add_or_reshape_a_tensor_is_refused_naming_the_tensor(
        checkpoint, compose_config, tmp_path):
    import playground
    from playground import export
    from safetensors.torch import load_file, save_file

    folder = export.run_export(compose_config("mode=export", f"ckpt_path={checkpoint[0]}"), tmp_path / "x")
    path = folder / "model.safetensors"
    weights = load_file(path)
    bias = "encoder.layers.0.feed_forward.w1.bias"
    lacking = {k: v for k, v in weights.items() if k != bias}
    adding = {**weights, bias.replace(".0.", ".1."): weights[bias].clone()}  # a layer the model (1 layer) lacks
    reshaped = {**weights, bias: weights[bias][:-1].clone()}
    for changed, named in ((lacking, rf"it lacks 1 tensor\(s\) \({bias}\)"),  # each of the right shape: names tell
                           (adding, r"it adds 1 tensor\(s\) \(encoder.layers.1.feed_forward.w1.bias\)"),
                           (reshaped, rf"size mismatch for {bias}")):
        save_file(changed, path)
        with pytest.raises(UserError, match=r"model.safetensors: not the weights of this folder's model.*" + named):
            playground.load(folder, device="cpu")
    path.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match=r"model.safetensors: not a safetensors file"):
        playground.load(folder, device="cpu")


def test_a_folder_of_safetensors_and_config_json_that_no_export_wrote_is_refused_in_one_line(tmp_path):
    import playground
    from safetensors.torch import save_file

    save_file({"embeddings.weight": torch.zeros(4, 2)}, tmp_path / "model.safetensors")  # a Hugging Face model's folder
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 2}')
    with pytest.raises(UserError, match=r"config.json is not one mode=export writes \(no \"config\" and \"step\"\)"):
        playground.load(tmp_path, device="cpu")  # named before the tokenizer files it lacks
    for side in ("src", "tgt"):
        (tmp_path / f"tokenizer_{side}.json").write_text('{"kind": "char"}')
    for config in ('{"architectures": ["BertModel"]}', "[1, 2]", '{"step": 3}'):  # a KeyError's traceback before
        (tmp_path / "config.json").write_text(config)
        with pytest.raises(UserError, match=r"config.json is not one mode=export writes"):
            playground.load(tmp_path, device="cpu")
    (tmp_path / "config.json").write_bytes(b"\xff{")
    with pytest.raises(UserError, match=r"its config.json is not JSON"):
        playground.load(tmp_path, device="cpu")


@pytest.mark.parametrize("mode, given, refused", [
    ("eval", "output_file=o.txt", True), ("eval", "text=hello", True), ("eval", "dataset.tokenizer=char", True),
    ("eval", "trainer.max_steps=9", True), ("eval", "dataset.test_file=t.tsv", False),
    ("eval", "trainer.label_smoothing=0", False),  # test/loss is computed with it
    ("eval", "decode.batch_size=8", True), ("eval", "trainer.eval_batch_size=8", False), ("eval", "decode=beam", False),
    ("eval", "decode.nbest=2", True),  # hypotheses.txt holds the best one
    ("translate", "trainer.label_smoothing=0.3", True), ("translate", "dataset.num_test=5", True),
    ("translate", "trainer.device=cpu", False), ("translate", "decode.beam_size=4", False),
    ("score", "text=hello", True), ("score", "decode=beam", True), ("score", "decode.max_len_b=3", True),
    ("score", "decode.batch_size=8", False), ("score", "trainer.device=cpu", False),  # it scores, and decodes nothing
    ("average", "model.heads=8", True), ("export", "decode.beam_size=3", True)])
def test_an_override_a_mode_would_not_use_is_refused_naming_it(compose_config, monkeypatch, mode, given, refused):
    class CommandLine:  # what Hydra holds of the command line when the entry runs
        overrides = SimpleNamespace(task=[f"mode={mode}", "ckpt_path=c.pt", *([] if given.startswith("text=") else
                                                                             [given])])

        @staticmethod
        def initialized():
            return True

        @classmethod
        def get(cls):
            return cls

    monkeypatch.setattr(inference, "HydraConfig", CommandLine)
    cfg = compose_config(f"mode={mode}", "ckpt_path=c.pt", given)  # text= reaches the config, not Hydra's overrides
    if refused:
        with pytest.raises(UserError, match=rf"^{given}: mode={mode} .*, so this would have no effect: remove it$"):
            inference.refuse_unused_overrides(cfg, cfg)
    else:
        inference.refuse_unused_overrides(cfg, cfg)


@pytest.mark.parametrize("given, readers", [("text=hello", "mode=translate"), ("reference_file=r.txt", "mode=score"),
                                             ("input_file=i.txt", "mode=translate or mode=score")])
def test_training_refuses_the_inputs_of_translate_and_score_naming_the_modes_that_read_them(compose_config, given,
                                                                                               readers):
    from playground.checks import check_run_config

    with pytest.raises(UserError, match=rf"^{given}: mode=train does not read it \(it is for {readers}\): remove it$"):
        check_run_config(compose_config(given))


def test_a_line_is_cut_only_past_the_models_positions_and_counted():
    encode = inference.Encoder(SymbolTokenizer(10), limit=5)
    exactly, longer = encode(["1 2 3 4 5", "1 2 3 4 5 6"])
    assert (len(exactly), len(longer), encode.cut) == (5, 5, 1)  # a line of exactly the limit is kept whole


def test_a_byte_order_mark_at_the_start_of_an_input_file_is_no_part_of_its_first_line(translate):
    out = translate(["\ufeff3 1 4 1 5", "3 1 4 1 5"])  # an editor's BOM (Windows Notepad) before the first line
    assert out[0] == out[1]


@pytest.mark.parametrize("nbest", [1, 2])
def test_a_translation_holding_a_newline_is_written_on_one_line_so_line_n_answers_input_n(translate, monkeypatch, nbest):
    # a target vocabulary learned from JSONL sentences with "\n" inside them can decode to one
    monkeypatch.setattr(SymbolTokenizer, "decode", lambda self, ids: "first half\nsecond half")
    out = translate(["3 1 4", "1 5"], "decode=beam", f"decode.nbest={nbest}", name=f"newline{nbest}.txt")
    assert len(out) == 2 * nbest
    assert all(line.endswith("first half second half") for line in out)
