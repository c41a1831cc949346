import logging
import os
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import playground.kernels  # noqa: E402,F401  (registers build_model(..., kernels="fast"))
from playground.config import ModelConfig, register_configs  # noqa: E402
from playground.data import MODEL_IDS  # noqa: E402
from playground.data.toy_corpus import make_pairs, write  # noqa: E402
from playground.model import build_model  # noqa: E402
from playground.setup import cpu_computes_bf16  # noqa: E402

register_configs()

# Under pytest-xdist (pytest.ini runs 2 workers) each worker, and every command a test starts, computes on one
# thread: two workers of two threads each would fight over 2 cores. The tiny test models gain nothing from a
# second thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# The dtypes this CPU computes natively: kernels are checked in each of them (bf16 only with AVX512-BF16 or AMX).
NATIVE_DTYPES = [torch.float32] + ([torch.bfloat16] if cpu_computes_bf16() else [])


def build(model_cfg, src_vocab_size, tgt_vocab_size, kernels="reference"):
    """build_model with the data side's special ids, as the experiment calls it."""
    return build_model(model_cfg, src_vocab_size, tgt_vocab_size, kernels, **MODEL_IDS)


@pytest.fixture
def compose_config():
    """Compose configs/config.yaml with overrides, as the command line would."""

    def _compose(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def entry(monkeypatch, capfd):
    """Run `python transformer_playground.py ARGS` in this process, as its own process would (a sweep's jobs run
    in one process either way), without a new process's seconds of start-up. Returns returncode, stdout, stderr.
    What the command changes for the process (the logging handlers Hydra sets up, Hydra's global state, the
    environment, the working folder: `cwd`, the repository's by default) is put back afterwards."""

    def run_entry(*args, cwd=ROOT):
        root = logging.getLogger()
        handlers, level, environment = root.handlers[:], root.level, dict(os.environ)
        entry_point = str(ROOT / "transformer_playground.py")
        monkeypatch.setattr(sys, "argv", [entry_point, *args])
        monkeypatch.chdir(cwd)
        code = 0
        try:
            runpy.run_path(entry_point, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
            GlobalHydra.instance().clear()
            os.environ.clear()
            os.environ.update(environment)
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run_entry


def tiny_model_config(**changes):
    """A ModelConfig small enough for fast tests, with any field changed."""
    fields = dict(d_model=32, heads=4, enc_layers=2, dec_layers=2, d_ff=64, dropout=0.0)
    fields.update(changes)
    return ModelConfig(**fields)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return SimpleNamespace(generator=torch.Generator().manual_seed(0))


# The test files that take longest go to the two workers first (pytest.ini: each file runs on one worker), so that
# neither worker is left with a long file at the end while the other idles.
LONGEST_FIRST = ["test_processes.py", "test_sweep.py", "test_text_data.py", "test_reliability.py",
                 "test_token_cache.py", "test_cli.py", "test_translate.py", "test_reference.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: order within a file kept


@pytest.fixture
def text_corpus(tmp_path):
    """A small rule-based parallel corpus: train.tsv (360 pairs) and test.tsv (40) in tmp_path."""
    pairs = make_pairs(400, seed=3)
    write(pairs[:360], tmp_path / "train.tsv", "tsv")
    write(pairs[360:], tmp_path / "test.tsv", "tsv")
    return tmp_path
