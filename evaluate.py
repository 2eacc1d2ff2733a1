"""Evaluate a checkpoint: python evaluate.py ckpt=<path> [split=test|val|train|all] [data.root=<folder>]

Writes metrics.json, predictions.csv, per_class.csv, thresholds.json, confusion_matrix.png, roc.png, pr.png,
reliability.png, report.md and report.html (see lungnet/evaluation/pipeline.py and conf/evaluate.yaml).
The same command as ``lungnet-evaluate`` (`lungnet.commands.evaluate.main`, ``conf/evaluate.yaml``); ``--help`` lists
the options.
"""

from lungnet.commands.evaluate import main as evaluate

if __name__ == "__main__":
    evaluate()
