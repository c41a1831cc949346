import json
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import build, tiny_model_config
from playground.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from playground.errors import UserError
from test_cli import run


def test_a_saved_checkpoint_loads_without_running_code_and_leaves_no_temporary_file(tmp_path):
    state = {"model": build(tiny_model_config(), 20, 20).state_dict(), "config": {"seed": 1}, "step": 7,
             "tokenizers": {}}
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", state)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 7


def test_a_checkpoint_of_another_shape_names_the_first_mismatched_parameter(tmp_path):
    small = build(tiny_model_config(d_model=32), 20, 20).state_dict()
    wider = build(tiny_model_config(d_model=64), 20, 20)
    with pytest.raises(UserError, match=r"parameter src_embed.embedding.weight has shape \(20, 32\) in the "
                                        r"checkpoint but \(20, 64\) in this model"):
        load_model_weights(wider, small, "last.pt")


def test_a_checkpoint_missing_a_layer_says_which(tmp_path):
    shallow = build(tiny_model_config(enc_layers=1), 20, 20).state_dict()
    with pytest.raises(UserError, match=r"parameter encoder.layers.1.\S+ of this model is missing"):
        load_model_weights(build(tiny_model_config(enc_layers=2), 20, 20), shallow, "last.pt")


@pytest.mark.parametrize("content, message", [(b"not a checkpoint", "not a checkpoint of this project"),
                                              (b"hello\tciao\n", r"not a checkpoint of this project \(not a file "
                                                                r"torch.save writes: a data or text file\?\)"),
                                              (b"PK\x03\x04 half a checkpoint", "not a readable checkpoint, "
                                                                                "truncated or damaged"),
                                              (b"", "not a readable checkpoint")])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"ckpt_path={path}: {message}"):
        load_checkpoint(path)


def test_an_empty_ckpt_path_is_named_as_empty_not_as_the_working_folder():
    for empty in ("", " "):
        with pytest.raises(UserError, match=r"^ckpt_path is empty: give a checkpoint file"):
            load_checkpoint(empty)


def test_a_pickled_object_is_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": object()}, path)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("tokenizers"), "not a complete Transformer Playground checkpoint (no tokenizers)"),
    (lambda state: state.pop("step"), "not a complete Transformer Playground checkpoint (no step)"),
    (lambda state: state["tokenizers"]["tgt"].pop("num_symbols"), "its tokenizers cannot be rebuilt (KeyError: "
                                                                   "'num_symbols')"),
    (lambda state: state["tokenizers"].pop("src"), "its tokenizers cannot be rebuilt (KeyError: 'src')"),
    (lambda state: state.update(model=None), "not a Transformer Playground checkpoint (no model weights and config)"),
    (lambda state: state.update(config="d_model: 32"), "not a Transformer Playground checkpoint (no model weights and "
                                                       "config)")])
def test_a_checkpoint_without_the_parts_eval_and_translate_read_is_refused_by_name(tmp_path, change, message):
    from playground.inference import load_trained

    state = torch.load(OLD / "best.pt", weights_only=True)
    change(state)
    path = tmp_path / "incomplete.pt"
    save_checkpoint(path, state)
    with pytest.raises(UserError, match=f"^{re.escape(f'ckpt_path={path}: {message}')}$"):
        load_trained(path)


OLD = Path(__file__).resolve().parent / "data" / "checkpoint_6eeb92a"  # written by main at 6eeb92a (model.attention=sdpa)


def test_a_checkpoint_from_before_trainer_kernels_evaluates_to_its_own_test_metrics(tmp_path):
    expected = json.loads((OLD / "metrics.json").read_text())  # measured by 6eeb92a's own run, in fp32
    result = run("mode=eval", f"ckpt_path={OLD / 'best.pt'}", "trainer.precision=fp32", f"hydra.run.dir={tmp_path}/e",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert got["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-5)
    # Output lengths are limited per sentence now (decode.max_len_a * its own length + b), where 6eeb92a took the
    # batch's longest source: outputs that run to the limit without EOS are shorter, and were wrong either way.
    # So exact match is the same, and the text metrics of those wrong outputs (BLEU, chrF, CER, WER) are not.
    for key in ("test/exact_match", "test/token_accuracy"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_a_checkpoint_from_before_trainer_kernels_resumes_and_translates(compose_config, tmp_path, capsys):
    from playground import experiment, inference

    config = torch.load(OLD / "last.pt", weights_only=True)["config"]
    overrides = [f"{group}.{key}={config[group][key]}" for group, keys in
                 (("model", ("d_model", "d_ff", "heads", "enc_layers", "dec_layers")),
                  ("dataset", ("num_train", "num_valid", "num_test")), ("trainer", ("batch_size", "precision")))
                 for key in keys]
    flat = experiment.run_train(compose_config(*overrides, "trainer.max_steps=45", "trainer.eval_every=20",
                                               "trainer.kernels=fast",
                                               f"ckpt_path={OLD / 'last.pt'}"), tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 45
    assert 0.0 <= flat["test/exact_match"] <= 1.0
    capsys.readouterr()
    inference.run_translate(compose_config("mode=translate", f"ckpt_path={OLD / 'best.pt'}", "text=3 1 4"))
    printed = capsys.readouterr().out.split()
    assert printed and all(word.isdigit() for word in printed)


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    from playground import checkpoint

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}, "step": 1, "tokenizers": {}})

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError, match=rf"^{path}: could not be written \(No space left on device\); the previous "
                                        rf"last.pt is unchanged"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_disk_that_fills_during_torch_save_is_named_as_full_not_as_torchs_zip_writer_error(tmp_path, monkeypatch):
    import builtins

    from playground import checkpoint

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}, "step": 1, "tokenizers": {}})

    class FullDisk:  # the file torch.save writes into, on a disk with 100 bytes left
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(28, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(checkpoint, "open", lambda *args: FullDisk(builtins.open(*args)), raising=False)
    with pytest.raises(UserError, match=rf"^{path}: could not be written \(No space left on device\); the previous "
                                        rf"last.pt is unchanged$"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "config": {}, "step": 2})  # torch's own save
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_checkpoint_and_the_folder_it_is_renamed_in_are_flushed_to_disk(tmp_path, monkeypatch):
    from playground import checkpoint

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {}, "config": {}})
    assert path.stat().st_ino in synced and path.parent.stat().st_ino in synced


def test_metrics_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from playground import checkpoint
    from playground.experiment import _write_metrics

    _write_metrics(tmp_path, {"test/bleu": 1.0, "step": 1})

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", fail)
    with pytest.raises(UserError, match=rf"{tmp_path / 'metrics.json'}: could not be written \(Input/output error\)"):
        _write_metrics(tmp_path, {"test/bleu": 2.0, "step": 2})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test/bleu": 1.0, "step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_run_folder_given_as_ckpt_path_is_refused_naming_the_checkpoints_in_it(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        save_checkpoint(tmp_path / "run" / "checkpoints" / name, {"model": {}, "config": {}})
    with pytest.raises(UserError) as refused:
        load_checkpoint(tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    assert str(refused.value) == (f"ckpt_path={tmp_path / 'run'} is a folder, not a checkpoint file (in it: "
                                  f"{folder / 'best.pt'} to evaluate or translate, {folder / 'last.pt'} to resume)")
