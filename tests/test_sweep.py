"""A sweep leaves one readable run per job, and a summary table of all of them."""

import csv
import json

import pytest
from omegaconf import OmegaConf

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_cli import ROOT, SMALL
from test_reliability import FAST

from playground.data.big_corpus import write_corpus
from playground.sweep import summarize, within_noise


def test_a_heads_sweep_leaves_one_complete_run_per_job_and_a_summary(entry, tmp_path):
    sweep = tmp_path / "sweep"
    result = entry("-m", "model.heads=1,2,4", *SMALL, "trainer.max_steps=10", "trainer.eval_every=10",
                 f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 3
    for i, (job, heads) in enumerate(zip(jobs, [1, 2, 4])):  # named by number and overrides
        assert job.startswith(f"{i}_") and f"model.heads={heads}," in job
    for job in jobs:
        events = EventAccumulator(str(sweep / job), size_guidance={"images": 0}).Reload()
        tags = events.Tags()
        assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "perf/mfu", "valid/exact_match",
                "test/exact_match"} <= set(tags["scalars"])
        assert "attention/decoder.layers.1.cross_attn" in tags["images"]
        assert "valid/samples/text_summary" in tags["tensors"]
        hparams = events.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
        assert b"model.heads" in hparams["_hparams_/session_start_info"]
        assert b"decode.beam_size" in hparams["_hparams_/session_start_info"]  # a decoding sweep lines up too
        assert b"trainer.beam_size" not in hparams["_hparams_/session_start_info"]  # retired: decode.beam_size now
        assert b"test/exact_match" in hparams["_hparams_/experiment"]  # a metric the HParams tab compares runs by
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model.heads"] for r in rows) == ["1", "2", "4"]
    assert all(0.0 <= float(r["test/exact_match"]) <= 1.0 for r in rows)
    assert (sweep / "summary.md").read_text().count("\n") == 7  # sorted by, blank, header, rule, three jobs
    assert "sweep summary" in result.stdout


@pytest.mark.parametrize("monitor, mode, order", [("valid/nll", "min", ["1", "3", "2"]),
                                                  ("valid/bleu", "max", ["2", "3", "1"]),
                                                  (None, None, ["2", "3", "1"])])  # written before trainer.monitor
def test_the_summary_puts_the_best_job_by_the_runs_monitor_first(tmp_path, monitor, mode, order):
    for name, value in [("0_a=1", 0.5), ("1_a=2", 0.9), ("2_a=3", 0.7)]:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- a={name[-1]}\n")
        metrics = {"valid/nll": value, "valid/bleu": value, "valid/exact_match": value, "step": 3}
        if monitor:
            metrics.update(monitor=monitor, monitor_mode=mode)
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    table = summarize(tmp_path)
    assert table.startswith(f"sorted by {monitor or 'valid/exact_match'} ({mode or 'max'})")
    assert [line.split(" | ")[1] for line in table.splitlines()[4:]] == order


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_job_without_a_score_for_the_monitor_is_listed_last_whatever_the_direction(tmp_path, mode):
    for name, value in [("0_a=1", 0.5), ("1_a=2", float("nan")), ("2_a=3", 0.7), ("3_a=4", None)]:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- a={name[-1]}\n")
        metrics = {"valid/nll": value, "step": 3} if value is not None else {"step": 3}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    rows = [line.split(" | ")[1] for line in summarize(tmp_path, "valid/nll", mode).splitlines()[4:]]
    assert rows[:2] == (["3", "1"] if mode == "max" else ["1", "3"]) and sorted(rows[2:]) == ["2", "4"]



def test_every_experiment_preset_composes_and_runs_a_few_steps(entry, tmp_path):
    sweep = tmp_path / "presets"
    paths = write_corpus(tmp_path / "corpus", 200, held_out=8, vocabulary=300, median_words=5)  # table3's files
    files = [f"dataset.{split}_file={path}" for split, path in paths.items()]  # the synthetic presets ignore them
    result = entry("-m", "experiment=glob(*)", *SMALL, "trainer.max_steps=2", "trainer.eval_every=2",
                 "dataset.num_valid=8", "dataset.num_test=8", *files, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    presets = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    finished = {o.split("=", 1)[1] for p in sweep.glob("*/metrics.json")  # each job's own record of its overrides
                for o in OmegaConf.load(p.parent / ".hydra" / "overrides.yaml") if o.startswith("experiment=")}
    assert finished == presets


def test_an_optuna_trial_refused_for_its_values_scores_the_worst_and_the_study_goes_on(entry, tmp_path):
    sweep = tmp_path / "optuna"
    result = entry("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, "trainer.max_steps=4",
                   "trainer.batch_size=1000", f"hydra.sweep.dir={sweep}")  # more than the 400 training pairs
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "2 jobs of the sweep refused" in result.stderr and "refused jobs:" in (sweep / "summary.md").read_text()
    assert len(list(sweep.glob("*/failed.txt"))) == 2  # the second trial ran after the first was refused
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_value == float("-inf")


def test_a_three_trial_optuna_study_minimises_the_monitor_and_reports_the_best_parameters(entry, tmp_path):
    sweep = tmp_path / "optuna"
    result = entry("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=minimize",
                 "trainer.monitor=valid/nll", *SMALL, "trainer.max_steps=10", "trainer.eval_every=10",
                 f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    runs = [json.loads(f.read_text()) for f in sweep.glob("*/metrics.json")]
    assert len(runs) == 3
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(r["valid/nll"] for r in runs))  # each trial returned its monitor
    assert {"optimizer.lr", "model.dropout"} <= set(best.best_params)


def test_long_override_lists_still_make_a_valid_and_distinct_folder_name():
    from playground.config import job_dirname

    a, b = job_dirname("optimizer.lr=0.1," + "x" * 300), job_dirname("optimizer.lr=0.2," + "x" * 300)
    assert len(a) <= 120 and len(b) <= 120 and a != b
    assert job_dirname("dataset.train_file=data/train.tsv") == "dataset.train_file=data_train.tsv"


def fake_job(folder, overrides, metrics):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "metrics.json").write_text(json.dumps({**metrics, "monitor": "valid/exact_match", "monitor_mode": "max"}))


def test_jobs_that_differ_only_by_seed_are_one_configuration_with_mean_sd_and_the_noise_rule(tmp_path):
    results = {1: [0.50, 0.52, 0.48], 2: [0.90, 0.91, 0.89], 4: [0.905, 0.90, 0.895]}
    for job, (heads, seed) in enumerate((h, s) for h in results for s in (1, 2, 3)):
        fake_job(tmp_path / f"{job}_job", [f"model.heads={heads}", f"seed={seed}"],
                 {"valid/exact_match": results[heads][seed - 1], "step": 10})
    table = summarize(tmp_path)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and " ± " in line]
    assert [(r[0].strip("| "), r[1], r[2]) for r in rows] == [("2", "3", "0.9000 ± 0.0100"),
                                                            ("4", "3", "0.9000 ± 0.0050"),
                                                            ("1", "3", "0.5000 ± 0.0200")]
    assert [r[-1].strip(" |") for r in rows] == ["best", "within the noise", "beyond the noise"]
    assert (tmp_path / "summary_by_config.csv").read_text().splitlines()[0].startswith("model.heads,n,")
    assert "every job, sorted by valid/exact_match" in (tmp_path / "summary.md").read_text()


def test_the_noise_rule_is_twice_the_standard_error_of_the_difference():
    assert within_noise((0.90, 0.01, 3), (0.91, 0.01, 3))  # 0.01 < 2 * 0.0082
    assert not within_noise((0.90, 0.01, 3), (0.93, 0.01, 3))  # 0.03 > 0.0163
    assert not within_noise((0.90, 0.0, 5), (0.901, 0.0, 5))  # no spread at all: any difference is real
    assert within_noise((1.0, 0.0, 3), (1.0, 0.0, 3))  # every seed of both at exact match 1.0: the same result


ROW_CHANGES = {"base": {}, "A_1_head": {"model.heads": 1}, "A_16_heads": {"model.heads": 16},
               "B_key_dim_16": {"model.key_dim": 16}, "C_1_layer": {"model.enc_layers": 1, "model.dec_layers": 1},
               "C_d_model_64": {"model.d_model": 64, "model.d_ff": 256}, "D_no_dropout": {"model.dropout": 0.0},
               "D_no_label_smoothing": {"trainer.label_smoothing": 0.0},
               "E_learned_positions": {"model.positional": "learned"}}


def test_each_table3_row_changes_only_what_its_row_of_the_paper_changes(compose_config):
    def flat(cfg):
        return {f"{group}.{key}": value for group in ("model", "dataset", "trainer", "optimizer", "scheduler")
                for key, value in OmegaConf.to_container(cfg[group]).items()}

    base = flat(compose_config("experiment=table3"))
    assert base["dataset.name"] == "text_pairs" and base["model.dropout"] == 0.1 and base["trainer.max_steps"] == 500
    rows = {p.stem for p in (ROOT / "configs" / "table3_row").glob("*.yaml")}
    assert rows == set(ROW_CHANGES)
    for row, changes in ROW_CHANGES.items():
        composed = flat(compose_config("experiment=table3", f"table3_row={row}"))
        assert {k: v for k, v in composed.items() if base[k] != v} == changes, row


def test_a_job_refused_for_its_data_leaves_the_rest_of_the_sweep_running_and_summarised(entry, tmp_path):
    sweep = tmp_path / "sweep"  # 400 pairs a batch passes every config check; only the data (300 pairs) refuses it
    result = entry("-m", "trainer.batch_size=400,16", *[o for o in FAST if not o.startswith("trainer.batch_size")],
                 "trainer.max_steps=2", "trainer.eval_every=2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert "error: job 0: trainer.batch_size=400 is more than the 300 training examples" in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the summary of the jobs that ran: which were refused, why
    assert last.startswith("error: 1 job of the sweep refused: 0_") and last.endswith("more than the 300 training examples")
    assert "Traceback" not in result.stderr
    assert [p.parent.name.split("_")[0] for p in sweep.glob("*/metrics.json")] == ["1"]  # job 1 ran after it
    assert "refused jobs:" in (sweep / "summary.md").read_text()
    again = entry("-m", "trainer.batch_size=400,16", *[o for o in FAST if not o.startswith("trainer.batch_size")],
                  "trainer.max_steps=2", "trainer.eval_every=2", f"hydra.sweep.dir={sweep}")  # into the same folder
    assert again.returncode == 2 and "already holds a run's checkpoints" in again.stderr  # it stops there, as before
    assert [p.parent.name.split("_")[0] for p in sweep.glob("*/failed.txt")] == ["0"]  # job 1's run is not "refused"


def test_a_sweep_into_the_folder_of_an_earlier_one_adds_to_its_table_but_reports_only_its_own_refusals(tmp_path,
                                                                                                        capsys):
    from playground.sweep import FAILED, SweepSummary

    fake_job(tmp_path / "0_model.heads=1", ["model.heads=1"], {"valid/exact_match": 0.99, "step": 10})  # earlier
    (tmp_path / "1_model.heads=3").mkdir()
    (tmp_path / "1_model.heads=3" / FAILED).write_text("model.heads=3 does not divide model.d_model=128\n")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    fake_job(tmp_path / "0_model.heads=4", ["model.heads=4"], {"valid/exact_match": 0.5, "step": 10})  # this sweep's
    summary.on_multirun_end(config)  # the earlier sweep's refusal is not this one's: no exit 2
    rows = [line.split(" | ")[0].strip("| ") for line in (tmp_path / "summary.md").read_text().splitlines()[4:]]
    assert rows == ["0_model.heads=1", "0_model.heads=4"]  # one table of both sweeps, as docs/run_variants.sh builds
    assert "refused" not in capsys.readouterr().err + (tmp_path / "summary.md").read_text()

    (tmp_path / "2_model.heads=5").mkdir()  # a refusal of the next sweep into the folder is its own
    summary.on_multirun_start(config)
    (tmp_path / "2_model.heads=5" / FAILED).write_text("model.heads=5 does not divide model.d_model=128\n")
    with pytest.raises(SystemExit) as stopped:
        summary.on_multirun_end(config)
    assert stopped.value.code == 2
    assert "1 job of the sweep refused: 2_model.heads=5: model.heads=5 does not" in capsys.readouterr().err



def test_a_seed_whose_loss_overflowed_still_gets_its_configuration_a_row(tmp_path):
    for job, (heads, seed, loss) in enumerate([(1, 1, 2.0), (1, 2, float("inf")), (2, 1, 1.0), (2, 2, 1.2)]):
        fake_job(tmp_path / f"{job}_job", [f"model.heads={heads}", f"seed={seed}"],
                 {"valid/exact_match": 0.5 + heads / 10, "test/loss": loss, "step": 10})
    table = summarize(tmp_path)
    rows = {r[0].strip("| "): r for r in (line.split(" | ") for line in table.splitlines() if " ± " in line)}
    assert rows["2"][3] == "1.1000 ± 0.1414" and rows["1"][3] == "inf ± nan"


def test_an_eval_sweep_is_sorted_by_the_test_score_and_a_missing_sort_key_says_job_order(tmp_path):
    for name, value in [("0_ckpt_path=a", 0.5), ("1_ckpt_path=b", 0.9), ("2_ckpt_path=c", 0.7)]:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- mode=eval\n- ckpt_path={name[-1]}\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps({"test/exact_match": value, "step": 3}))
    table = summarize(tmp_path)  # mode=eval's metrics.json has no valid/ scores and no monitor
    assert table.startswith("sorted by test/exact_match (max)")
    assert [line.split(" | ")[1] for line in table.splitlines()[4:]] == ["b", "c", "a"]
    table = summarize(tmp_path, "test/bleu")
    assert table.startswith("in job order (no job recorded test/bleu)")
    assert [line.split(" | ")[1] for line in table.splitlines()[4:]] == ["a", "b", "c"]


def test_run_table3_reuses_a_finished_run_only_when_it_ran_with_the_same_overrides(tmp_path):
    import runpy

    script = runpy.run_path(str(ROOT / "docs" / "run_table3.py"))  # its functions, without running main
    run_dir = tmp_path / "base" / "seed_1"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test/bleu": 3.0, "test/ppl": 40.0}))
    (run_dir / ".hydra" / "overrides.yaml").write_text(  # a quick look: python docs/run_table3.py --steps 50
        "- experiment=table3\n- table3_row=base\n- seed=1\n- trainer.progress=off\n- trainer.max_steps=50\n"
        "- trainer.eval_every=50\n")
    with pytest.raises(SystemExit) as exit_:  # the full suite into the same folder: not a 50-step run's numbers
        script["run"]("base", 1, tmp_path, [], 1)
    assert str(run_dir) in str(exit_.value.code) and "trainer.max_steps=50" in str(exit_.value.code)
    again = script["run"]("base", 1, tmp_path, ["trainer.max_steps=50", "trainer.eval_every=50"], 1)
    assert again["test/bleu"] == 3.0
