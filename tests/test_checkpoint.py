import pytest
import torch

from conftest import tiny_model_config
from playground.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from playground.errors import UserError
from playground.model import build_model


def test_a_saved_checkpoint_loads_without_running_code_and_leaves_no_temporary_file(tmp_path):
    state = {"model": build_model(tiny_model_config(), 20, 20).state_dict(), "config": {"seed": 1}, "step": 7}
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", state)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 7


def test_a_checkpoint_of_another_shape_names_the_first_mismatched_parameter(tmp_path):
    small = build_model(tiny_model_config(d_model=32), 20, 20).state_dict()
    wider = build_model(tiny_model_config(d_model=64), 20, 20)
    with pytest.raises(UserError, match=r"parameter src_embed.embedding.weight has shape \(20, 32\) in the "
                                        r"checkpoint but \(20, 64\) in this model"):
        load_model_weights(wider, small, "last.pt")


def test_a_checkpoint_missing_a_layer_says_which(tmp_path):
    shallow = build_model(tiny_model_config(enc_layers=1), 20, 20).state_dict()
    with pytest.raises(UserError, match=r"parameter encoder.layers.1.\S+ of this model is missing"):
        load_model_weights(build_model(tiny_model_config(enc_layers=2), 20, 20), shallow, "last.pt")


@pytest.mark.parametrize("content, message", [(b"not a checkpoint", "not a checkpoint of this project"),
                                              (b"", "not a readable checkpoint")])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"ckpt_path={path}: {message}"):
        load_checkpoint(path)


def test_a_pickled_object_is_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": object()}, path)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(path)
