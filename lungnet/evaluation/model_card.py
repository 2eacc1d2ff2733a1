"""``model_card.md``: a model card for the evaluated checkpoint, after Mitchell et al., "Model Cards for Model
Reporting" (FAT* 2019): model details, intended use, factors, metrics, evaluation data, training data, quantitative
analyses, ethical considerations, caveats and recommendations; then how the card was made.

Everything comes from the checkpoint (hyper-parameters, split record), its training run directory
(``environment.json``, ``data_report.json``, ``.hydra/overrides.yaml``, when present) and the evaluation result.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from lungnet.artifacts.decision import sha256_file
from lungnet.artifacts.paths import card_path
from lungnet.evaluation.bootstrap_unit import phrase
from lungnet.evaluation.report import DATASET_NOTES, fmt, fmt_ci, rest_accuracy, table
from lungnet.io import write_text

log = logging.getLogger(__name__)

SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
    "How this card was made",
)
SMALL_SET = 200


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def training_facts(ckpt: Path, hparams: dict) -> dict:
    """Data facts of the training run: fingerprint, split sizes and class counts, split digests, command."""
    run = ckpt.resolve().parent.parent
    env = _read_json(run / "environment.json")
    report = _read_json(run / "data_report.json")
    overrides = run / ".hydra" / "overrides.yaml"
    return {
        "run_dir": str(run),
        "fingerprint": env.get("data_fingerprint"),
        "command": env.get("command"),
        "git_commit": env.get("git_commit"),
        "overrides": overrides.read_text(encoding="utf-8").strip() if overrides.is_file() else None,
        "class_counts": report.get("class_counts") or {},
        "splits": (hparams.get("extra") or {}).get("splits") or {},
    }


def _weights(hparams: dict) -> str:
    model = hparams.get("model") or {}
    if model.get("weights"):
        return f"initialised from `{model['weights']}`, then fine-tuned"
    return "ImageNet-pretrained (timm), then fine-tuned" if model.get("pretrained") else "trained from random init"


def _members(ensemble) -> list[list[str]]:
    """Model-details rows of an ensemble's members."""
    return [
        [
            f"Member {m.name}",
            f"{m.prep.model}, {m.prep.input_size} px, {m.prep.in_chans} channel(s), mean {list(m.prep.mean)}, std "
            f"{list(m.prep.std)}; {_weights(m.loaded.hparams)}; T = {m.temperature or 'none'}; `{m.path}` (sha256 "
            f"`{m.sha256[:16]}...`)",
        ]
        for m in ensemble.members
    ]


def details(ev, facts: dict) -> str:
    """Model details and intended use."""
    loaded = ev.loaded
    ensemble = getattr(loaded, "ensemble", None)
    rows = [
        ["Model", f"{loaded.spec.name} ({loaded.spec.arch}), {len(loaded.labels)} outputs"],
        ["Task", ("multi-label" if loaded.multilabel else "single-label") + f": {', '.join(loaded.labels)}"],
        *(_members(ensemble) if ensemble is not None else [["Weights", _weights(loaded.hparams)]]),
        [
            "Checkpoint" if ensemble is None else "Manifest",
            f"`{loaded.path}` (sha256 `{sha256_file(loaded.path)[:16]}...`)",
        ],
        ["Trained with", f"lungnet, git {facts.get('git_commit') or 'unknown'}"],
        ["Licence of the code", "Apache-2.0; the weights inherit the terms of their training data"],
    ]
    use = (
        "**Research use only: not a medical device.** Intended for data-science teams and ML researchers studying "
        "chest X-ray classification: comparing models, auditing their failure modes, reproducing results. "
        "Out of scope: diagnosis, triage or treatment of any patient; images unlike the training images (the OOD "
        "gate refers those, but it is not a guarantee); populations, devices or views the training data lacks."
    )
    return f"## Model details\n\n{table(['', ''], rows)}\n\n## Intended use\n\n{use}"


def factors(ev) -> str:
    """Factors that may change performance."""
    text = (
        "Performance can depend on the acquisition site and device, patient age (paediatric vs adult), view "
        "(PA/AP/lateral), image resolution and post-processing, and disease prevalence. This evaluation reports "
        f"one split ({ev.split}) as a whole"
        + (
            "; per subgroup: the report's subgroup section."
            if ev.result.get("subgroups")
            else "; no subgroup metadata was evaluated here."
        )
    )
    return f"## Factors\n\n{text}"


def metrics_section(result: dict) -> str:
    """Metrics with CIs, calibration, operating point, conformal coverage, OOD rate."""
    ci, cal, op = result.get("confidence_intervals", {}), result.get("calibration", {}), result["operating_point"]
    rows = [[k, fmt_ci(ci.get(k))] for k in ("accuracy", "f1_macro", "auroc_macro") if ci.get(k)]
    rows.append(
        [
            "ECE before / after temperature",
            f"{fmt(cal.get('ece'))} / {fmt(cal.get('ece_after'))} "
            f"(T = {fmt(cal.get('temperature'), 2)}, fitted on {cal.get('fit_split', 'n/a')})",
        ]
    )
    for lab, res in op.get("applied", {}).items():
        rows.append(
            [
                f"Operating point: {lab} (threshold {fmt(res.get('threshold'))}, fitted on {op.get('fit_split')})",
                f"sensitivity {fmt(res.get('sensitivity'))}, specificity {fmt(res.get('specificity'))}",
            ]
        )
    block = result.get("decisions") or {}
    if result.get("conformal_coverage") is not None:
        note = "; **not guaranteed: shift detected**" if result.get("conformal_shift_warning") else ""
        rows.append(
            [
                f"Conformal coverage (target {1 - float(block.get('alpha') or 0):.2f})",
                f"{fmt(result['conformal_coverage'])}, mean set size "
                f"{fmt(result.get('conformal_mean_set_size'), 2)}{note}",
            ]
        )
    if block:
        rows.append(
            [
                "Referred to a person",
                f"{block.get('referred')} of {block.get('n')}; {rest_accuracy(block)}",
            ]
        )
    if block.get("ood_rate") is not None:
        rows.append(
            ["Flagged out-of-distribution", f"{block['ood_flagged']} of {block['n']} ({fmt(block['ood_rate'])})"]
        )
    level = int(100 * float(result.get("bootstrap", {}).get("level", 0.95)))
    text = f"Intervals: {level}% percentile bootstrap {phrase(result.get('bootstrap'))}."
    return f"## Metrics\n\n{text}\n\n{table(['metric', 'value'], rows)}"


def data_sections(ev, facts: dict) -> str:
    """Evaluation data and training data."""
    result, loaded = ev.result, ev.loaded
    counts = ", ".join(f"{k} {v}" for k, v in (result.get("class_counts") or {}).items())
    prep = (
        f"read as grayscale, resized ({loaded.data.get('resize') or 'squash'}) to {result.get('input_size')} px"
        + (f" after reducing to {loaded.data['downsample_to']} px" if loaded.data.get("downsample_to") else "")
        + f", normalised with mean {list(loaded.spec.mean)} and std {list(loaded.spec.std)}"
        if getattr(loaded, "ensemble", None) is None
        else "each member reads the same decoded image and preprocesses it itself (see Model details)"
    )
    evaluation = (
        f"{result.get('data_name')} at `{result.get('data_root')}`, split **{ev.split}**: {result['n']} images "
        f"({counts or 'multi-label'}). Preprocessing: {prep}."
    )
    rows = [
        [name, str(info.get("n")), json.dumps(facts["class_counts"].get(name, {})), f"`{info.get('digest', '')[:12]}`"]
        for name, info in facts["splits"].items()
    ]
    training = (
        f"{loaded.data.get('name') or loaded.data.get('source')} (root `{loaded.data.get('root')}`, data fingerprint "
        f"`{(facts.get('fingerprint') or 'not recorded')[:16]}`)."
    )
    if rows:
        training += "\n\n" + table(["split", "images", "class counts", "content digest"], rows)
    return f"## Evaluation data\n\n{evaluation}\n\n## Training data\n\n{training}"


def caveats(ev) -> str:
    """Ethical considerations, and caveats and recommendations."""
    result = ev.result
    notes = []
    if DATASET_NOTES.get(str(result.get("data_name"))):
        notes.append(DATASET_NOTES[str(result.get("data_name"))])
    if result["n"] < SMALL_SET:
        notes.append(f"The evaluated split is small ({result['n']} images): the intervals above are wide.")
    if result.get("conformal_shift_warning"):
        notes.append(
            "The evaluated split differs from the calibration split: its conformal coverage is not guaranteed."
        )
    if (result.get("decisions") or {}).get("shift", {}).get("in_sample"):
        notes.append("Coverage and operating point were measured on the split they were fitted on (in-sample).")
    notes.append("Validation numbers of a model selected on validation are optimistic; confirm on an external set.")
    ethics = (
        "Trained on public, de-identified radiographs; labels come from reports or curators and carry their errors. "
        "A model can learn the hospital or device instead of the disease and can fail silently on groups the "
        "training data under-represents. Never use its outputs for patient care."
    )
    items = "\n".join(f"- {n}" for n in notes)
    return f"## Ethical considerations\n\n{ethics}\n\n## Caveats and recommendations\n\n{items}"


def render_model_card(ev) -> str:
    """The card as markdown."""
    ensemble = getattr(ev.loaded, "ensemble", None)  # an ensemble's training facts: its first member's run
    facts = training_facts(ensemble.members[0].path if ensemble else ev.loaded.path, ev.loaded.hparams)
    header, rows = _per_class(ev.result)
    commands = [f"python {' '.join(sys.argv)}"]
    if facts.get("command"):
        commands.insert(0, f"python {facts['command']}")
    parts = [
        f"# Model card: {ev.loaded.spec.name} on {ev.result.get('data_name')}",
        "Structure after Mitchell et al., *Model Cards for Model Reporting* (FAT* 2019). Research use only.",
        details(ev, facts),
        factors(ev),
        metrics_section(ev.result),
        data_sections(ev, facts),
        f"## Quantitative analyses\n\nPer class on {ev.split}:\n\n{table(header, rows)}\n\n{_full_report(ev)}",
        caveats(ev),
        "## How this card was made\n\n```\n" + "\n".join(commands) + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


def _full_report(ev) -> str:
    """Where the full report is: this evaluation's ``report.md``, or (a card written by training, which draws no
    report) the command that writes one."""
    if ev.opts["report"]["figures"] or ev.opts["report"]["html"]:
        return "Full report: `report.md`."
    return f"Full report: `python evaluate.py ckpt={ev.loaded.path} split={ev.split}` writes `report.md`."


def _per_class(result: dict) -> tuple[list[str], list[list[str]]]:
    from lungnet.evaluation.report import per_class_rows

    return per_class_rows(result)


def write_model_card(ev) -> Path:
    """Writes ``model_card.md`` into the evaluation directory (and a copy beside the decision file when one was
    written, ``<ckpt stem>.model_card.md``, which the app shows: `lungnet.artifacts.paths.card_path`)."""
    text = render_model_card(ev)
    path = write_text(ev.run_dir / "model_card.md", text)
    written = (ev.result.get("decisions") or {}).get("file")
    if written and ev.split == "val":
        write_text(card_path(written), text)
    log.info("Wrote %s", path)
    return path
