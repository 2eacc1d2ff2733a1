"""The headline rows of a `bench.perf.scale` record (what `bench.render` puts in docs/benchmarks.md)."""

from __future__ import annotations


def figures(results: dict[int, dict], fits: dict, px: int, stages: tuple, target_n: tuple) -> list[dict]:
    """The record's headline rows (`bench.render`): per stage its CPU seconds at every size, exponent and
    extrapolations; the second setup over the first scan at every size (issue #27's 2 % target)."""
    sizes = sorted(results)
    ns = named(sizes)
    rows = []
    for stage in [s for s in stages if s in fits]:
        cpu = " / ".join(f"{results[n][stage]['cpu_s']:.4g}" if stage in results[n] else "-" for n in sizes)
        at = [f"{fits[stage][f'cpu_s_at_{m // 1000}k']:.4g}" for m in target_n]
        value = f"{cpu} CPU s; exponent {fits[stage]['exponent']:.2f}; 112k / 224k extrapolated {' / '.join(at)} s"
        rows.append({"figure": f"{stage}, NIH-like {px} px, N = {ns}", "value": value})
    done = [n for n in sizes if {"finish_1rank", "finish_scoring", "finish_loading", "epoch_store"} <= set(results[n])]
    if done:  # the finish's loading and rest (no model: the scoring less its batches' fetching) over the epoch's
        parts = [(results[n]["finish_loading"]["cpu_s"], fin_rest(results[n])) for n in done]
        value = " / ".join(
            f"({a:.3g} + {b:.3g}) / {results[n]['epoch_store']['cpu_s']:.4g} = "
            f"{(a + b) / results[n]['epoch_store']['cpu_s']:.3f}x"
            for n, (a, b) in zip(done, parts, strict=True)
        )
        rows.append(
            {
                "figure": "finish without the model: (its batches' loading + the rest: calibration, reports) / one "
                f"epoch's loading from the store, N = {named(done)} (the timed run's model, "
                "simple_cnn: 1 channel, few features; the per-batch normalisation and forward pass, on the device "
                "with a GPU, left out; at NIH's 2048 features see bench.perf.finish_rest)",
                "value": value,
            }
        )
    both = [n for n in sizes if {"scan_first", "setup_second"} <= set(results[n])]
    if both:
        ratios = [results[n]["setup_second"]["cpu_s"] / results[n]["scan_first"]["cpu_s"] for n in both]
        share = " / ".join(f"{r:.2%}" for r in ratios)
        rows.append({"figure": f"second setup / first scan, N = {named(both)} (target under 2 %)", "value": share})
    return rows


def fin_rest(got: dict) -> float:
    """The finish's CPU outside its scoring (calibration, reports): ``finish_1rank`` less ``finish_scoring``."""
    return max(got["finish_1rank"]["cpu_s"] - got["finish_scoring"]["cpu_s"], 0.0)


def named(sizes: list[int]) -> str:
    """Sizes as a figure names them: ``1k / 4k / 16k`` (below 1000 as they are)."""
    return " / ".join(f"{n // 1000}k" if n >= 1000 else str(n) for n in sizes)
