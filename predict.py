"""Classify images with a trained model: python predict.py ckpt=<path> input=<file|folder|glob> [explain=gradcam]

The same command as ``lungnet-predict`` (`lungnet.commands.predict.main`, ``conf/predict.yaml``); ``--help`` lists the
options.
"""

from lungnet.commands.predict import main as predict

if __name__ == "__main__":
    predict()
