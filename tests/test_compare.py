"""python -m playground.compare: a paired bootstrap on two runs' test BLEU."""

import random

import pytest
import sacrebleu

from playground.compare import compare, corpus_bleu, main, paired_bootstrap, sentence_statistics
from playground.data.toy_corpus import make_pairs
from playground.errors import UserError

REFERENCES = [italian for _, italian in make_pairs(200, seed=3)]


def degraded(lines, share, seed=0):
    """Each line with `share` of its words dropped."""
    rng = random.Random(seed)
    return [" ".join(w for w in line.split() if rng.random() >= share) for line in lines]


def test_bleu_from_summed_sentence_counts_is_sacrebleus_corpus_bleu():
    hypotheses = degraded(REFERENCES, 0.3)
    statistics = sentence_statistics(hypotheses, REFERENCES)
    assert corpus_bleu(statistics.sum(0)) == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score)


def test_identical_systems_differ_by_nothing_with_p_one():
    system = degraded(REFERENCES, 0.3)
    result = paired_bootstrap(system, list(system), REFERENCES, resamples=200)
    assert (result["delta"], result["low"], result["high"], result["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_a_clearly_better_system_is_better_beyond_the_noise():
    result = paired_bootstrap(degraded(REFERENCES, 0.1), degraded(REFERENCES, 0.5, seed=1), REFERENCES)
    assert result["delta"] > 10 and result["low"] > 0 and result["p"] < 0.05


def test_two_systems_that_differ_by_chance_are_within_the_noise():
    a, b = degraded(REFERENCES, 0.3, seed=2), degraded(REFERENCES, 0.3, seed=3)  # the same quality, other draws
    result = paired_bootstrap(a, b, REFERENCES)
    assert result["low"] < 0 < result["high"] and result["p"] > 0.05


def write_run(folder, hypotheses, references):
    folder.mkdir()
    (folder / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses))
    (folder / "references.txt").write_text("".join(r + "\n" for r in references))
    return folder


def test_compare_reads_two_run_directories_and_refuses_what_it_cannot_compare(tmp_path, capsys):
    a = write_run(tmp_path / "a", REFERENCES[:50], REFERENCES[:50])
    b = write_run(tmp_path / "b", degraded(REFERENCES[:50], 0.5), REFERENCES[:50])
    assert compare(a, b, resamples=100)["delta"] > 0
    assert main([str(a), str(b), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "A - B +" in out and "p < 0.01 (100 paired resamples)" in out  # no draw below 0: not "p = 0.000"
    assert main([str(a), str(a), "--resamples", "100"]) == 0
    assert "p = 1.000 (100 paired resamples): within the noise" in capsys.readouterr().out
    other = write_run(tmp_path / "other", REFERENCES[50:90], REFERENCES[50:90])
    with pytest.raises(UserError, match="different test sets"):
        compare(a, other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no hypotheses.txt"):
        compare(a, tmp_path / "empty")
    assert main([str(a), str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_carriage_return_inside_a_sentence_stays_in_its_line(tmp_path):
    # runs write one sentence a line ending at "\n" (a TSV's "\r" inside a sentence is kept), and sacreBLEU reads
    # them so: read with universal newlines, the "\r" would split a reference in two and the run be refused
    references = REFERENCES[:20] + ["prima\rdopo"]
    a = write_run(tmp_path / "a", references, references)
    b = write_run(tmp_path / "b", degraded(references, 0.5), references)
    result = compare(a, b, resamples=100)
    assert result["bleu_a"] == pytest.approx(sacrebleu.corpus_bleu(references, [references]).score)


@pytest.mark.parametrize("resamples", ["0", "-5"])
def test_a_number_of_resamples_below_one_is_one_line_naming_the_option(tmp_path, capsys, resamples):
    a = write_run(tmp_path / "a", REFERENCES[:20], REFERENCES[:20])
    assert main([str(a), str(a), "--resamples", resamples]) == 2
    assert capsys.readouterr().err == f"error: --resamples {resamples}: the number of paired draws, at least 1\n"


def test_a_negative_seed_or_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    a = write_run(tmp_path / "a", REFERENCES[:20], REFERENCES[:20])
    assert main([str(a), str(a), "--seed", "-1"]) == 2
    assert capsys.readouterr().err == "error: --seed -1: the seed of the draws, 0 or more\n"
    b = write_run(tmp_path / "b", REFERENCES[:20], REFERENCES[:20])
    (b / "hypotheses.txt").write_bytes(b"ciao\nun caff\xe8\n")  # Latin-1, from another tool
    assert main([str(a), str(b)]) == 2
    assert capsys.readouterr().err == f"error: {b / 'hypotheses.txt'} line 2: not UTF-8 text (invalid continuation byte)\n"
