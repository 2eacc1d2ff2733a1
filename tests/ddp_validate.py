"""Helper script for tests/train/test_ddp.py: validate a checkpoint with N CPU processes and dump the metrics.

Usage: python tests/ddp_validate.py <ckpt> <devices> <out.json>
"""

import json
import sys

import pytorch_lightning as pl

from lungnet.artifacts.checkpoint import read_checkpoint
from lungnet.data.datamodule import LungDataModule
from lungnet.train.module import LitClassifier


def main(ckpt_path: str, devices: int, out: str) -> None:
    hp = read_checkpoint(ckpt_path)["hyper_parameters"]
    module = LitClassifier.load_from_checkpoint(ckpt_path, weights_only=True)
    from lungnet.models.specs import ModelSpec

    dm = LungDataModule(hp["data"], ModelSpec.from_dict(hp["spec"]), seed=hp["extra"]["seed"])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    if trainer.is_global_zero:
        with open(out, "w") as fh:
            json.dump({**metrics, "world_size": trainer.world_size}, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
