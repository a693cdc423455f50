"""Train any model on any dataset: every hyper-parameter is a Hydra override (see conf/).

python scripts/train.py dataset=cifar100 model=resnet18
python scripts/train.py -m optimizer.lr=1e-3,3e-3 model=baseline,resnet18
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def train(cfg: DictConfig) -> float | None:
    from tritoncnn.data import CorruptDatasetError, DatasetNotFoundError
    from tritoncnn.train.checkpoint import CheckpointError
    from tritoncnn.train.run import ConfigError, append_sweep_row, main
    from tritoncnn.train.trainer import TrainingDivergedError

    logging.getLogger("tritoncnn").setLevel(logging.INFO)
    hc = HydraConfig.get()
    try:
        summary = main(cfg, hc.runtime.output_dir)
    except (
        ConfigError,
        DatasetNotFoundError,
        CorruptDatasetError,
        CheckpointError,
        TrainingDivergedError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if hc.mode == RunMode.MULTIRUN:
        append_sweep_row(hc.sweep.dir, list(hc.overrides.task), summary)
    test = summary["test_acc"]
    print(
        f"done: best val acc {summary['best_val_acc'] or float('nan'):.4f} | test acc "
        f"{test if test is not None else float('nan'):.4f} | {summary['wall_seconds']:.1f} s | "
        f"{summary['images_per_s'] or 0:.0f} img/s | {hc.runtime.output_dir}"
    )
    return summary["best_val_acc"]


if __name__ == "__main__":
    train()
