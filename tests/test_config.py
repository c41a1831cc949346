import logging
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf.errors import ConfigKeyError, ValidationError

from playground.experiment import load_data
from conftest import ROOT, build
from playground.checks import check_not_a_sweep
from playground.errors import UserError
from playground.setup import build_optimizer, build_scheduler, resolve_recipe

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUP_OPTIONS = [(group.name, yaml.stem) for group in sorted(CONFIGS.iterdir()) if group.is_dir()
                 for yaml in sorted(group.glob("*.yaml"))
                 if group.name not in ("experiment", "hparams_search", "table3_row")]  # table3_row: test_sweep.py


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"model", "dataset", "optimizer", "scheduler", "trainer"} <= groups


@pytest.fixture(scope="module")
def local_text(tmp_path_factory):
    """A small corpus as a TSV file and as a Hugging Face dataset saved to disk: no network needed."""
    from playground.data.toy_corpus import make_pairs, write

    folder = tmp_path_factory.mktemp("text")
    pairs = make_pairs(200)
    write(pairs, folder / "train.tsv", "tsv")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"translation": [{"en": en, "it": it} for en, it in pairs]}).save_to_disk(folder / "hub")
    return [f"++dataset.train_file={folder / 'train.tsv'}", f"++dataset.hub_name={folder / 'hub'}"]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_option_of_every_group_composes_and_builds(group, option, compose_config, local_text):
    text = local_text[:1] if option == "text_pairs" else local_text[1:] if option == "opus_books" else []
    cfg = compose_config(f"{group}={option}", "dataset.num_train=50", "dataset.num_valid=10", "dataset.num_test=10",
                         *text)
    data = load_data(cfg.dataset)
    model = build(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    resolve_recipe(cfg, cfg.trainer.max_steps)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.max_steps)
    src, tgt = data.splits["train"].batch(torch.arange(4))
    assert model(src, tgt[:, :-1]).shape[:2] == tgt[:, 1:].shape
    optimizer.step()
    scheduler.step()


def test_the_default_is_the_reverse_task_on_the_tiny_model(compose_config):
    cfg = compose_config()
    assert (cfg.dataset.name, cfg.model.d_model, cfg.mode) == ("reverse", 128, "train")
    assert cfg.dataset.min_len == 1 and cfg.dataset.max_len >= 10 and cfg.dataset.vocab_size >= 10


def test_the_base_preset_carries_the_papers_base_model(compose_config):
    m = compose_config("model=base").model
    assert (m.d_model, m.heads, m.enc_layers, m.dec_layers, m.d_ff, m.dropout) == (512, 8, 6, 6, 2048, 0.1)


def test_an_unknown_key_is_refused_by_hydra(compose_config):
    with pytest.raises(ConfigCompositionException, match="model.nhead"):
        compose_config("model.nhead=8")


def test_a_value_of_the_wrong_type_is_refused_by_hydra(compose_config):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError), match="heads"):
        compose_config("model.heads=eight")


@pytest.mark.parametrize("launcher, target", [("slurm", "submitit"), ("joblib", "joblib")])
def test_the_cluster_and_parallel_launchers_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert target in cfg.hydra.launcher._target_.lower()


def test_a_device_or_precision_this_machine_lacks_is_refused_naming_the_key(monkeypatch):
    from playground import setup
    from playground.errors import UserError

    assert setup.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="trainer.device=tpu is not one of: auto, cpu, cuda, mps"):
        setup.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="trainer.device=cuda but this machine has no cuda device"):
            setup.resolve_device("cuda")
    no_units = r"fp32: this CPU has no bf16 units \(no AVX512-BF16 or AMX\)"
    for native, instead in ((True, "bf16"), (False, no_units)):  # never what is refused next
        monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: native)
        refusal = rf"^trainer.precision=fp16 needs trainer.device=cuda \(on cpu, use {instead}\)$"
        with pytest.raises(UserError, match=refusal):
            setup.autocast_for(torch.device("cpu"), "fp16")
    with pytest.raises(UserError, match="trainer.precision=int8 is not one of"):
        setup.autocast_for(torch.device("cpu"), "int8")
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: True)  # the context itself, on any CPU
    with setup.autocast_for(torch.device("cpu"), "bf16")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from playground import setup

    cpu = torch.device("cpu")
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: True)
    assert setup.resolve_precision(cpu, "auto") == "bf16"
    assert setup.resolve_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: False)
    assert setup.resolve_precision(cpu, "auto") == "fp32"
    with setup.autocast_for(cpu, "auto")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_a_cpu_with_bf16_units_that_onednn_does_not_use_trains_in_fp32_and_refuses_bf16_saying_why(monkeypatch):
    """torch multiplies bf16 on the CPU through oneDNN only; held below the CPU's bf16 instructions (ONEDNN_MAX_CPU_ISA)
    or switched off, oneDNN leaves them unused and torch emulates bf16 some 20x slower than fp32."""
    from playground import setup
    from playground.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # what an AVX512-BF16 CPU reports
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert setup.resolve_precision(cpu, "auto") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # what oneDNN then reports
    assert setup.resolve_precision(cpu, "auto") == "fp32"
    with pytest.raises(UserError, match=r"^trainer.precision=bf16 but this CPU's bf16 units are not used "
                                        r"\(ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN below them\): emulated, .*$"):
        setup.resolve_precision(cpu, "bf16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert setup.resolve_precision(cpu, "auto") == "fp32"
    with pytest.raises(UserError, match=r"\(torch.backends.mkldnn.enabled is False\)"):
        setup.resolve_precision(cpu, "bf16")


@pytest.mark.parametrize("cuda, mps, chosen", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_auto_takes_a_cuda_gpu_first_then_apple_mps_then_the_cpu(monkeypatch, cuda, mps, chosen):
    from playground import setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # what a machine with (or without) each reports
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert setup.resolve_device("auto") == torch.device(chosen)


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_on_apple_mps_precision_auto_is_fp32_bf16_is_taken_whatever_the_cpu_and_fp16_is_refused(monkeypatch,
                                                                                                cpu_bf16):
    from playground import setup
    from playground.errors import UserError

    mps = torch.device("mps")  # a device object needs no hardware
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: cpu_bf16)  # the CPU's bf16 units say nothing of the GPU's
    assert setup.resolve_precision(mps, "auto") == "fp32"
    assert setup.resolve_precision(mps, "bf16") == "bf16"
    assert setup.resolve_precision(mps, "fp32") == "fp32"
    with pytest.raises(UserError, match=r"^trainer.precision=fp16 needs trainer.device=cuda \(on mps, use bf16\)$"):
        setup.autocast_for(mps, "fp16")


def test_bf16_on_a_cpu_without_bf16_units_is_refused_in_one_line_before_any_work(monkeypatch, compose_config, tmp_path):
    from playground import experiment, setup
    from playground.errors import UserError

    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: False)  # what an AVX2-only CPU reports
    monkeypatch.setattr(experiment, "load_data", lambda *a, **k: pytest.fail("data was loaded before the refusal"))
    with pytest.raises(UserError, match=r"^trainer.precision=bf16 but this CPU has no bf16 units .*many times slower "
                                        r"than fp32 here \(use trainer.precision=fp32 or auto\)$"):
        experiment.run_train(compose_config("trainer.device=cpu", "trainer.precision=bf16"), tmp_path)  # GPU or not
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("overrides, message", [
    (["model.max_len=8"], "dataset.max_len=10 needs 11 positions but model.max_len=8"),
    (["dataset=text_pairs", "dataset.train_file=nowhere.tsv", "model.max_len=100"],
     "dataset.max_src_len=128 needs 128 positions but model.max_len=100"),
    (["dataset=text_pairs", "dataset.train_file=nowhere.tsv", "dataset.max_src_len=64", "dataset.max_tgt_len=64",
      "model.max_len=64"], "dataset.max_tgt_len=64 needs 65 positions but model.max_len=64"),
])
def test_data_longer_than_the_model_positions_is_refused_before_any_data_is_read(compose_config, tmp_path, overrides,
                                                                                 message):
    from playground.errors import UserError
    from playground.experiment import run_train

    with pytest.raises(UserError, match=rf"^{message} \(raise model.max_len or lower dataset"):
        run_train(compose_config(*overrides), tmp_path / "run")  # nowhere.tsv would be "no such file"
    assert not (tmp_path / "run").exists()


def test_two_runs_started_in_the_same_second_get_their_own_default_directories():
    from hydra import compose, initialize_config_dir

    dirs = []
    for _ in range(2):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            dirs.append(compose(config_name="config", return_hydra_config=True).hydra.run.dir)
    assert dirs[0] != dirs[1]
    assert all(re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d\.\d{6}", d) for d in dirs), dirs


def test_a_presets_top_level_keys_take_effect_and_the_command_line_still_wins(compose_config, tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "seeded.yaml").write_text("# @package _global_\nseed: 42\nmode: eval\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = compose_config(searchpath, "experiment=seeded")
    assert (cfg.seed, cfg.mode) == (42, "eval")
    assert compose_config(searchpath, "experiment=seeded", "seed=7").seed == 7
    assert compose_config().seed == 1234  # config.yaml's own value still wins over the schema's


@pytest.mark.parametrize("preset, message", [
    ("experiment=heads_sweep", r"experiment=heads_sweep is a sweep \(model.heads=1,2,4,8\): run it with -m, as in "
                               r"python transformer_playground.py -m experiment=heads_sweep"),
    ("hparams_search=optuna", r"hparams_search=optuna is a sweep \(optimizer.lr=tag"),
])
def test_a_sweep_preset_without_multirun_is_refused_in_one_line(preset, message):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[preset], return_hydra_config=True)
    with pytest.raises(UserError, match=message):
        check_not_a_sweep(cfg.hydra)
    cfg.hydra.mode = RunMode.MULTIRUN
    check_not_a_sweep(cfg.hydra)  # with -m it runs


@pytest.mark.parametrize("override, message", [
    ("optimizer.name=adamx", "optimizer.name=adamx is not one of: adam, adamw, sgd"),
    ("scheduler.name=linear", "scheduler.name=linear is not one of: noam, cosine, constant"),
    ("model.norm=batchnorm", "model.norm=batchnorm is not one of: layernorm, rmsnorm"),
    ("dataset.tokenizer=sentencepiece", "dataset.tokenizer=sentencepiece is not one of: char, word, bpe"),
    ("trainer.kernels=triton", "trainer.kernels=triton is not one of: reference, fast"),
    ("trainer.monitor_mode=maximum", "trainer.monitor_mode=maximum is not one of: null, max, min"),
])
def test_a_misspelt_choice_is_refused_before_any_data_is_read(compose_config, tmp_path, monkeypatch, override,
                                                             message):
    from playground import experiment

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the choice was checked")

    monkeypatch.setattr(experiment, "load_data", no_data)
    cfg = compose_config("dataset=opus_books", override)  # opus_books would download: it must not get that far
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        experiment.run_train(cfg, tmp_path)



def test_a_sweep_with_an_sgd_job_whose_learning_rate_is_left_null_is_refused_before_the_first_job(compose_config):
    """optimizer.lr=null is automatic for Adam only: the sweep's adam job would train, then its sgd job be refused."""
    from playground.checks import check_overrides, check_run_config

    with pytest.raises(UserError, match=r"^optimizer.lr is not set, and the automatic one is for Adam: give "
                                        r"optimizer=sgd a learning rate \(optimizer.lr=0.1\) \(in the sweep's job with "
                                        r"optimizer=sgd optimizer.lr=null\)$"):
        check_overrides(["-m", "optimizer=adam,sgd", "optimizer.lr=null"])
    check_run_config(compose_config("optimizer=sgd", "optimizer.lr=null", "ckpt_path=last.pt"))  # the checkpoint's

@pytest.mark.parametrize("args", [
    ["-m", "model.d_model=range(96,97)", "model.heads=3"],  # the sweep's d_model, not the default's, meets heads=3
    ["-m", "hparams_search=optuna", "model.d_model=choice(96,192)", "model.heads=3"],
    ["-m", "mode=translate", "ckpt_path=a.pt,b.pt", "input_file=in.txt"],  # not a training sweep
    ["-m", "trainer.kernels=fast", "model.heads=1,2"], ["-m", "optimizer.lr=null,0.001"],
    ["-m", "dataset=text_pairs", 'dataset.train_file="a,b.tsv",c.tsv'], ["-m", "experiment=glob(*)"], ["--cfg", "job"],
    ["-m", "seed=1,2", "trainer.progress=${hydra:job.name}"]])  # Hydra's own node exists in the job only
def test_the_command_lines_own_check_lets_every_valid_sweep_and_flag_through(args):
    from playground.checks import check_overrides

    check_overrides(args)  # Hydra, and each job, judge these: nothing is refused ahead of them


@pytest.mark.parametrize("found", [set(), {"sbatch"}])
def test_a_slurm_sweep_from_a_machine_without_slurm_is_refused_before_hydra_makes_its_folder(found, monkeypatch):
    import shutil

    from playground.checks import check_overrides

    monkeypatch.setattr(shutil, "which", lambda command: f"/usr/bin/{command}" if command in found else None)
    missing = "srun" if found else "sbatch"
    with pytest.raises(UserError, match=rf"^hydra/launcher=slurm: this machine has no {missing} \(one of SLURM's"):
        check_overrides(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "model.heads=1,2"])
    monkeypatch.setattr(shutil, "which", lambda command: f"/usr/bin/{command}")  # on the cluster: Hydra's business
    check_overrides(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "model.heads=1,2"])


def test_the_command_lines_own_check_finds_hydra_search_path_configs(tmp_path):
    from playground.checks import check_overrides

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 1\n")
    check_overrides([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])
    with pytest.raises(UserError, match=r"^\+model.d_model=64: model.d_model exists: write model.d_model=64"):
        check_overrides(["+model.d_model=64"])
    with pytest.raises(UserError, match=r"^Interpolation key 'model.nope' not found$"):
        check_overrides(["model.d_ff=${model.nope}"])
    check_overrides(["model.d_ff=${model.d_model}"])


@pytest.mark.parametrize("text, message", [
    ("model:\n  heads: 8\n  d_model: [128\n", r"^\S*mine\.yaml line 5: not valid YAML: while parsing a flow sequence: "
                                             r"expected ',' or '\]', but got '<stream end>'$"),
    ("model:\n  hedas: 8\n", r"^In 'experiment/mine': ConfigKeyError: model\.hedas: Key 'hedas' not in 'ModelConfig' "
                             r"\(did you mean model\.heads\?\)$"),
    ("trainer:\n  max_steps: ten\n", r"^In 'experiment/mine': ValidationError: trainer\.max_steps: Value 'ten' of type "
                                     r"'str' could not be converted to Integer$")])
def test_a_mistake_inside_a_users_yaml_file_is_one_line_naming_the_file_and_the_key_or_line(tmp_path, text, message):
    from playground.checks import check_overrides

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n" + text)
    with pytest.raises(UserError, match=message):
        check_overrides([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])


@pytest.mark.parametrize("content, message", [
    (b"model:\n  heads: 2\n", r"^In 'experiment/mine': ConfigKeyError: Key 'experiment' not in 'Config' \(a file of "
                             r"configs/experiment/ starts with the line `# @package _global_`, so that its keys are "
                             r"the run's own: model\.heads, not experiment\.model\.heads\)$"),
    (b"# @package _global_\nmodel:\n  heads: 2 # caf\xe9\n", r"^\S*experiment/mine\.yaml: not UTF-8 text \(invalid "
                                                            r"continuation byte at byte 43\): save it as UTF-8$"),
    (b"# @package _global_\ndefaults:\n  - override /model: huge\n",
     r"^model=huge is not one of: base, big, small, tiny \(configs/model/\) \(asked for by \S*experiment/mine\.yaml\)$")])
def test_a_users_experiment_file_without_its_header_in_another_encoding_or_choosing_a_missing_option_is_named(
        tmp_path, content, message):
    from playground.checks import check_overrides

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_bytes(content)
    with pytest.raises(UserError, match=message):
        check_overrides([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])


def test_a_data_file_given_to_a_generated_task_is_named_in_a_warning_rather_than_ignored(compose_config, tmp_path,
                                                                                        caplog):
    from playground import experiment

    cfg = compose_config("dataset.train_file=data/train.tsv", "trainer.max_steps=1", "dataset.num_train=64",
                         "dataset.num_valid=4", "dataset.num_test=4", "model.d_model=16", "model.d_ff=16")
    with caplog.at_level(logging.WARNING, logger="playground.experiment"):
        experiment.run_train(cfg, tmp_path)
    assert [r.getMessage() for r in caplog.records if "not read" in r.getMessage()] == [
        "dataset.train_file=data/train.tsv not read: dataset=reverse generates its examples (to train on files: "
        "dataset=text_pairs)"]


@pytest.mark.parametrize("args, preset", [
    (["dataset.name=text_pairs", "dataset.train_file=data/train.tsv"], "reverse"),
    (["dataset=opus_books", "dataset.name=text_pairs"], "opus_books")])
def test_dataset_name_on_the_command_line_is_refused_where_it_would_keep_another_presets_settings(args, preset):
    from playground.checks import check_overrides, compose_checked

    refused = (rf"^dataset\.name=text_pairs renames dataset={preset} but keeps its other settings \(its vocab_size, "
               r"lengths, files\): choose the dataset with dataset=text_pairs$")
    with pytest.raises(UserError, match=refused):
        check_overrides(args)
    with pytest.raises(UserError, match=refused):  # playground.run composes through the same check
        compose_checked(args)
    with pytest.raises(UserError, match=r"^dataset\.name=copy renames dataset=reverse"):  # a sweep, before its jobs
        check_overrides(["-m", "dataset.name=reverse,copy"])
    check_overrides(["dataset=text_pairs", "dataset.name=text_pairs", "dataset.train_file=data/train.tsv"])
    check_overrides(["dataset.name=reverse"])  # the preset's own name changes nothing


def test_a_users_dataset_file_naming_data_files_without_a_text_dataset_name_is_refused_naming_the_file(tmp_path):
    from playground.checks import check_overrides

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text("train_file: data/train.tsv\ntokenizer: word\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    with pytest.raises(UserError, match=r"^dataset=mine gives train_file: data/train.tsv to reverse, a generated task "
                                        r"that reads no file \(the name a dataset file that sets none gets\): add "
                                        rf"`name: text_pairs` to \S*{tmp_path.name}/dataset/mine\.yaml$"):
        check_overrides([search, "dataset=mine"])
    (tmp_path / "dataset" / "mine.yaml").write_text("name: text_pairs\ntrain_file: data/train.tsv\n")
    check_overrides([search, "dataset=mine"])
    check_overrides(["-m", "dataset=reverse,text_pairs", "dataset.train_file=data/train.tsv"])  # the command line's:
    # a warning in the generated task's job


@pytest.mark.parametrize("preset", ["opus_books", "text_pairs"])
def test_a_training_file_beside_a_hub_dataset_is_refused_rather_than_left_unread(compose_config, preset):
    from playground.checks import check_run_config

    cfg = compose_config(f"dataset={preset}", "dataset.hub_name=data/saved", "dataset.train_file=data/train.tsv")
    with pytest.raises(UserError, match=r"^dataset.train_file=data/train.tsv and dataset.hub_name=data/saved both name "
                                        r"the training pairs: give one \(to train on the file, dataset=text_pairs, or "
                                        r"dataset.hub_name=null\)$"):
        check_run_config(cfg)
    check_run_config(compose_config("dataset=opus_books", "dataset.hub_name=null", "dataset.train_file=data/train.tsv"))


def test_one_embedding_for_both_sides_of_text_needs_one_vocabulary_whatever_the_sizes(compose_config):
    from playground.checks import check_run_config

    text = ["dataset=text_pairs", "dataset.train_file=data/train.tsv", "model.tie_embeddings=all"]
    with pytest.raises(UserError, match=r"^model.tie_embeddings=all gives source and target tokens one embedding, so "
                                        r"it needs one vocabulary for both: add dataset.shared_vocab=true"):
        check_run_config(compose_config(*text))
    check_run_config(compose_config(*text, "dataset.shared_vocab=true"))
    check_run_config(compose_config("model.tie_embeddings=all"))  # a generated task has one vocabulary


def test_a_value_holding_an_equals_sign_or_a_comma_is_refused_with_the_quoting_that_reads_it():
    from playground.checks import check_overrides

    path = "/runs/multirun/0_model.heads=2,seed=1/checkpoints/best.pt"  # a sweep job's folder
    with pytest.raises(UserError, match=re.escape(f"""quote the value: 'ckpt_path="{path}"'""")):
        check_overrides(["mode=eval", f"ckpt_path={path}"])
    check_overrides(["mode=eval", f'ckpt_path="{path}"'])  # what the shell passes on for the quoted word


@pytest.mark.parametrize("override", ["hydra.sweeper.params.model.d_model=choice(96,192)",
                                      "hydra.sweeper.params.model.d_model='choice(96,192)'"])
def test_a_search_space_set_under_hydra_sweeper_params_is_refused_in_one_line_with_the_form_that_works(override):
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=re.escape("give it to the key itself, as in -m hparams_search=optuna "
                                                  "'model.d_model=choice(96,192)'")):
        check_overrides(["-m", "hparams_search=optuna", override])


@pytest.mark.parametrize("override", ["optimizer.lr=interval(1e-4,1e-3)", "optimizer.lr=tag(log,interval(1e-4,1e-3))"])
def test_an_interval_without_a_search_to_draw_from_it_is_refused_in_one_line(override):
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=rf"^{re.escape(override)}: interval\(\) is a range for a search .* add "
                                        rf"hparams_search=optuna"):
        check_overrides(["-m", override, "model.heads=1,2"])
    check_overrides(["-m", "hparams_search=optuna", override])  # Optuna draws from it


def test_a_misspelt_launcher_is_refused_in_one_line_listing_the_launchers():
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=r"^hydra/launcher=jobl is not one of: basic, joblib, "):
        check_overrides(["-m", "hydra/launcher=jobl", "model.heads=1,2"])
    check_overrides(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.heads=1,2"])


def test_a_sweep_whose_sweeper_looks_for_the_worst_runs_is_refused_before_its_first_job():
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=r"^hydra.sweeper.direction=maximize but trainer.monitor_mode=min"):
        check_overrides(["-m", "hparams_search=optuna", "trainer.monitor=valid/nll"])
    check_overrides(["-m", "hparams_search=optuna", "trainer.monitor=valid/nll", "hydra.sweeper.direction=minimize"])


@pytest.mark.parametrize("override", ["hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=-2",
                                      "hydra.sweeper.n_trials=x", "hydra.sweeper.n_jobs=0"])
def test_an_optuna_search_without_a_trial_to_run_is_refused_in_one_line_before_the_study(override):
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=rf"^{re.escape(override)}: the number of trials .* must be a whole number, "
                                        rf"1 or more$"):
        check_overrides(["-m", "hparams_search=optuna", override])
    check_overrides(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1"])


@pytest.mark.parametrize("args, message", [
    (["-m", "hparams_search=optuna", "model.d_model=32", "model.heads=3"], r"^model.heads=3 does not divide"),
    (["-m", "model.dropout=range(0,0.3,0.1)", "trainer.batch_size=0"], r"^trainer.batch_size=0 must be positive")])
def test_a_search_whose_every_trial_would_be_refused_for_a_value_it_does_not_search_stops_before_the_first(args, message):
    from playground.checks import check_overrides

    with pytest.raises(UserError, match=message):
        check_overrides(args)


@pytest.mark.parametrize("path", ["/runs/0_model.heads=2,seed=1/checkpoints/last.pt", "/home/josé/runs/last.pt",
                                  "~/runs/last.pt", "/with space/it's \"quoted\" \\back\\/last.pt", "/plain/last.pt"])
def test_a_printed_command_gives_hydra_the_path_exactly_as_it_is(path, monkeypatch):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from playground.rundir import command_line, quoted_override

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    words = shlex.split(command_line(quoted_override("ckpt_path", path)))  # as bash passes the pasted line on
    assert words[:2] == ["python", "transformer_playground.py"]
    assert OverridesParser.create().parse_override(words[2]).value() == path
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    line = command_line("seed=1")
    assert line.startswith("torchrun --nnodes=2 --nproc_per_node=2 transformer_playground.py seed=1\n")
    assert shlex.split(line.splitlines()[0])[-1] == "seed=1"  # the command itself pastes without a syntax error


def test_each_numeric_setting_is_refused_just_past_its_limit_and_taken_at_it():
    from playground.checks import check_decode, check_decode_vocabulary, check_trainer
    from playground.config import DecodeConfig, OptimizerConfig, SchedulerConfig, TrainerConfig
    from playground.setup import auto_warmup, check_optimizer, check_scheduler, check_unused_settings

    with pytest.raises(UserError, match=r"^optimizer.lr=0.0 must be positive"):
        check_optimizer(OptimizerConfig(lr=0.0))
    check_optimizer(OptimizerConfig(lr=1e-3, betas=[0.0, 0.98]))  # beta1 = 0: no momentum, a valid Adam
    check_scheduler(SchedulerConfig(name="cosine", warmup_steps=100, min_lr_ratio=1.0))  # 1: a constant after warmup
    with pytest.raises(UserError, match=r"^optimizer.eps=1e-06: optimizer=sgd does not use it"):
        check_unused_settings(OptimizerConfig(name="sgd", lr=0.1, eps=1e-6), SchedulerConfig())
    assert (auto_warmup(500), auto_warmup(60000)) == (67, 4000)  # 2/15 of the run, at most the paper's 4000
    with pytest.raises(UserError, match=r"^trainer.label_smoothing=1.0 must be in \[0, 1\)"):
        check_trainer(TrainerConfig(label_smoothing=1.0))
    check_decode_vocabulary(DecodeConfig(beam_size=18), 20)  # 20 tokens less PAD and BOS: 18 can start an output
    with pytest.raises(UserError, match=r"^decode.beam_size=19 is more than the 18 tokens"):
        check_decode_vocabulary(DecodeConfig(beam_size=19), 20)
    check_decode(DecodeConfig(max_len_a=0, max_len_b=5))  # a fixed limit of 5 tokens
    with pytest.raises(UserError, match=r"^decode.sampling=true draws one sequence per input, so decode.beam_size=2"):
        check_decode(DecodeConfig(sampling=True, beam_size=2))


@pytest.mark.parametrize("overrides, message", [
    (["decode.temperature=0.7"], r"^decode.temperature=0.7: only sampling reads it, and decode.sampling=false takes the "
                                 r"most likely token: add decode.sampling=true \(or use decode=sample\), or remove it$"),
    (["decode.top_k=5"], r"^decode.top_k=5: only sampling reads it"),
    (["decode=beam", "decode.top_p=0.9"], r"^decode.top_p=0.9: only sampling reads it"),
    (["decode=sample", "decode.sampling=false"], r"^decode.top_p=0.9: only sampling reads it"),
    (["decode.length_penalty=1.0"], r"^decode.length_penalty=1.0: only beam search reads it, and decode.beam_size=1 "
                                    r"takes one token at a time: add decode.beam_size=4 \(or use decode=beam\), or "
                                    r"remove it$"),
])
def test_a_decode_setting_the_chosen_decoding_would_not_read_is_refused_naming_it(compose_config, overrides, message):
    from playground.checks import check_decode

    with pytest.raises(UserError, match=message):
        check_decode(compose_config(*overrides).decode)


@pytest.mark.parametrize("overrides", [[], ["decode=beam"], ["decode=sample"], ["decode=sample", "decode.top_k=5",
                                       "decode.temperature=0.7"], ["decode=beam", "decode.length_penalty=1.0"]])
def test_each_decode_preset_and_the_settings_its_decoding_reads_are_accepted(compose_config, overrides):
    from playground.checks import check_decode

    check_decode(compose_config(*overrides).decode)


@pytest.mark.parametrize("overrides, message", [
    (["decode.batch_size=7"], r"^decode.batch_size=7: mode=train does not read it: its evaluations decode in batches "
                              r"of trainer.eval_batch_size, .*: set trainer.eval_batch_size, or remove it$"),
    (["decode=beam", "decode.nbest=2"], r"^decode.nbest=2: mode=train does not read it: its evaluations score the best "
                                        r"hypothesis alone"),
])
def test_a_training_run_refuses_the_decode_settings_its_evaluations_do_not_read(compose_config, tmp_path, monkeypatch,
                                                                              overrides, message):
    from playground import experiment

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the value was checked")

    monkeypatch.setattr(experiment, "load_data", no_data)
    with pytest.raises(UserError, match=message):
        experiment.run_train(compose_config(*overrides), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),  # passed `lr <= 0`: a traceback from torch
    ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
    ("trainer.grad_clip=nan", "trainer.grad_clip=nan is not a finite number"),  # trained, then blamed the lr
    ("optimizer.weight_decay=inf", "optimizer.weight_decay=inf is not a finite number"),
    ("decode.temperature=-inf", "decode.temperature=-inf is not a finite number"),
])
def test_a_number_that_is_nan_or_inf_is_refused_naming_the_key_before_any_data_is_read(compose_config, tmp_path,
                                                                                         monkeypatch, override, message):
    from playground import experiment
    from playground.checks import check_decode
    from playground.config import DecodeConfig

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the value was checked")

    monkeypatch.setattr(experiment, "load_data", no_data)
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        experiment.run_train(compose_config(override), tmp_path)
    with pytest.raises(UserError, match=r"^decode.temperature=nan is not a finite number$"):
        check_decode(DecodeConfig(sampling=True, temperature=float("nan")))  # from Python: playground.load().translate
