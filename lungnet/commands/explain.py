"""``lungnet-explain`` / ``python -m lungnet.explain``: heatmaps of a checkpoint's images, and how well they point
(``conf/explain.yaml``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lungnet.commands.wrapper import hydra_app, load_config


def explain_options(method: str, options: DictConfig | dict | None = None) -> dict:
    """A method's options from ``conf/explain/<method>.yaml`` with the set (non-null) ``options`` over them."""
    from lungnet.explain.base import ExplainError
    from lungnet.explain.cams import list_methods

    if method not in list_methods():
        raise ExplainError(f"Unknown method '{method}'; choose from {', '.join(list_methods())}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    merged = OmegaConf.merge(load_config(f"explain/{method}").get("options") or {}, given)
    return OmegaConf.to_container(merged, resolve=True)


@hydra_app("explain")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    """Explains (and optionally scores) a checkpoint's heatmaps (`lungnet.explain.job.run`)."""
    from lungnet.explain.job import run

    listed = cfg.methods if OmegaConf.is_list(cfg.methods) else str(cfg.methods).split(",")  # or 'a,b', quoted
    methods = [str(m).strip() for m in listed if str(m).strip()] if cfg.score != "none" else []
    return run(cfg, run_dir, explain_options(str(cfg.method), cfg.options), {m: explain_options(m) for m in methods})


if __name__ == "__main__":
    main()
