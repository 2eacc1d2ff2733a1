"""``lungnet-export`` / ``python -m lungnet.export``: ONNX (fp32, int8) or TorchScript beside a checkpoint
(``conf/export.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app
from lungnet.errors import ConfigError


@hydra_app("export")
def main(cfg: DictConfig, run_dir: Path) -> Path:
    """Exports ``cfg.ckpt`` (`lungnet.serve.export.export`); returns the written model file."""
    from lungnet.serve.export import export

    if not isinstance(cfg.ckpt, str):
        raise ConfigError(f"ckpt={cfg.ckpt}: export takes one checkpoint; export an ensemble's members one by one")
    return export(
        cfg.ckpt,
        str(cfg.format),
        cfg.out,
        opset=int(cfg.opset),
        verify=bool(cfg.verify),
        int8=bool(cfg.int8),
        calib=cfg.calib,
        calib_n=int(cfg.calib_n),
        min_agreement=float(cfg.min_agreement),
        int8_weights=str(cfg.int8_weights),
    )


if __name__ == "__main__":
    main()
