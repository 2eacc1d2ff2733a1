"""Evaluate a checkpoint: python evaluate.py ckpt=<path> [split=test|val|train|all] [data.root=<folder>]

Writes metrics.json, predictions.csv, per_class.csv, thresholds.json, confusion_matrix.png, roc.png, pr.png,
reliability.png, report.md and report.html (see lungnet/evaluation/run.py and conf/evaluate.yaml).
The same command as ``lungnet-evaluate`` (`lungnet.cli.evaluate`, ``conf/evaluate.yaml``); ``--help`` lists the options.
"""

from lungnet.cli import evaluate

if __name__ == "__main__":
    evaluate()
