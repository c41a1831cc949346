"""mode=export: a trained model as a folder that loads without running any code, to share or to keep.

    exported/
      model.safetensors     the weights (a tied matrix is stored once)
      config.json           the run's config and the step of the weights
      tokenizer_src.json    the vocabularies (playground's tokenizer records)
      tokenizer_tgt.json

mode=eval, mode=translate, mode=score and playground.load take the folder wherever they take a checkpoint.
"""

import json
import logging
import os
from pathlib import Path

from .errors import UserError

WEIGHTS, CONFIG = "model.safetensors", "config.json"
TOKENIZERS = {"src": "tokenizer_src.json", "tgt": "tokenizer_tgt.json"}


def is_exported(path) -> bool:
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def read_exported(folder) -> dict:
    """An exported folder's config, step and tokenizers, as a checkpoint holds them (without the weights)."""
    folder = Path(folder)

    def read(name):
        try:
            return json.loads((folder / name).read_text())
        except FileNotFoundError:
            raise UserError(f"ckpt_path={folder}: an exported folder needs {name} beside {WEIGHTS}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"ckpt_path={folder}: its {name} is not JSON ({e})") from None

    record = read(CONFIG)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or "step" not in record:
        # another program's folder of model.safetensors and config.json (a Hugging Face model's, say)
        raise UserError(f"ckpt_path={folder}: its {CONFIG} is not one mode=export writes (no \"config\" and \"step\"): "
                        f"not a folder of this project's mode=export")
    tokenizers = {side: read(name) for side, name in TOKENIZERS.items()}
    return {"config": record["config"], "step": record["step"], "tokenizers": tokenizers}


def load_exported_weights(model, folder) -> None:
    """Fill `model` (built from the folder's config) with model.safetensors, tied weights included."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(folder) / WEIGHTS
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except SafetensorError as e:
        raise UserError(f"{path}: not a safetensors file ({e})")
    except RuntimeError as e:  # torch's load_state_dict: a tensor of another shape; its first line names no tensor
        details = [line.strip() for line in str(e).splitlines()[1:]] or [str(e)]
        raise UserError(f"{path}: not the weights of this folder's model ({details[0]})")
    problems = [f"{what} {len(names)} tensor(s) ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})"
                for what, names in (("lacks", missing), ("adds", unexpected)) if names]
    if problems:
        raise UserError(f"{path}: not the weights of this folder's model: it {' and '.join(problems)}")


def run_export(cfg, run_dir) -> Path:
    """Write ckpt_path's model, config and tokenizers into RUN_DIR/exported."""
    from safetensors.torch import save_model

    from .inference import load_trained, refuse_unused_overrides
    from .rundir import log_file_only, pasted_override

    if cfg.ckpt_path is None:
        raise UserError("mode=export needs ckpt_path=PATH (a checkpoints/best.pt, last.pt or averaged.pt of a run)")
    refuse_unused_overrides(cfg)
    model, _, src_tok, tgt_tok, state = load_trained(cfg.ckpt_path)
    folder = Path(run_dir) / "exported"
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / WEIGHTS, 0o666 & ~umask)  # readable as the other files are (safetensors writes it 0600)
    (folder / CONFIG).write_text(json.dumps({"config": state["config"], "step": state["step"]}, indent=2) + "\n")
    for side, tokenizer in (("src", src_tok), ("tgt", tgt_tok)):
        (folder / TOKENIZERS[side]).write_text(json.dumps(tokenizer.to_dict()) + "\n")
    size = (folder / WEIGHTS).stat().st_size
    print(f"exported {sum(p.numel() for p in model.parameters()):,} parameters ({size / 2**20:.1f} MiB) and the "
          f"tokenizers into {folder.resolve()}\nuse it with: python transformer_playground.py mode=translate "
          f"{pasted_override('ckpt_path', folder.resolve())}   or   playground.load({str(folder.resolve())!r})")
    log_file_only(logging.getLogger(__name__), f"exported {cfg.ckpt_path} (step {state['step']}) into {folder}")
    return folder
