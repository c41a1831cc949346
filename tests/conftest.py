import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playground.config import ModelConfig, register_configs  # noqa: E402

register_configs()


@pytest.fixture
def compose_config():
    """Compose configs/config.yaml with overrides, as the command line would."""

    def _compose(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def tiny_model_config(**changes):
    """A ModelConfig small enough for fast tests, with any field changed."""
    fields = dict(d_model=32, heads=4, enc_layers=2, dec_layers=2, d_ff=64, dropout=0.0)
    fields.update(changes)
    return ModelConfig(**fields)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return SimpleNamespace(generator=torch.Generator().manual_seed(0))
