"""Train a chest X-ray classifier: python train.py [data=...] [model=...] [trainer=...] [key=value ...]

The same command as ``lungnet-train`` (`lungnet.commands.train.main`, ``conf/train.yaml``); ``--help`` lists the
options.
"""

from lungnet.commands.train import main as train

if __name__ == "__main__":
    train()
