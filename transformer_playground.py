"""Train, evaluate and use the Transformer of "Attention Is All You Need": `python transformer_playground.py --help`."""

import os
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from playground.config import register_configs
from playground.errors import UserError

register_configs()

if int(os.environ.get("RANK", "0")) > 0:
    # Under torchrun every process runs Hydra, and each would make its own run directory (their clocks
    # need not agree on the second). Only rank 0's is used: the others write nowhere that lasts.
    sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='playground-rank')}", "hydra.output_subdir=null",
                 "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from playground import experiment  # after Hydra has parsed the command line: --help stays fast

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.mode == "train":
            flat = experiment.run_train(cfg, run_dir)
            return flat.get(flat["monitor"])  # what sweepers optimise: the best value of trainer.monitor
        if cfg.mode == "eval":
            return experiment.run_eval(cfg, run_dir)["test/exact_match"]
        if cfg.mode == "translate":
            return experiment.run_translate(cfg)
        if cfg.mode == "average":
            return experiment.run_average(cfg, run_dir)
        raise UserError(f"mode={cfg.mode} is not one of: train, eval, translate, average")
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except experiment.Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
