"""Train a chest X-ray classifier: python train.py [data=...] [model=...] [trainer=...] [key=value ...]

The same command as ``lungnet-train`` (`lungnet.cli.train`, ``conf/train.yaml``); ``--help`` lists the options.
"""

from lungnet.cli import train

if __name__ == "__main__":
    train()
