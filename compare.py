"""Compare checkpoints on the same split: python compare.py runs=<multirun dir | [ckpt,ckpt,...]> [split=test]

See lungnet/evaluation/compare.py for the outputs and options.
The same command as ``lungnet-compare`` (`lungnet.commands.compare.main`, ``conf/compare.yaml``); ``--help`` lists the
options.
"""

from lungnet.commands.compare import main as compare

if __name__ == "__main__":
    compare()
