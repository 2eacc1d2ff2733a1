"""``lungnet-app`` / ``python -m lungnet.app``: the local web page and HTTP API (``conf/app.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lungnet.commands.wrapper import hydra_app


@hydra_app("app")
def main(cfg: DictConfig, run_dir: Path) -> None:
    """Serves the web page and HTTP API around ``cfg.ckpt`` (`lungnet.serve.app.serve`)."""
    from lungnet.serve.app import serve

    serve(cfg)


if __name__ == "__main__":
    main()
