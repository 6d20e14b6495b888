"""Training the classic way (the lecture notes' recipe): momentum SGD with weight decay, LR / 10 on a
validation plateau, mean subtraction, random crops and flips, AlexNet's PCA lighting, the ten-crop test,
ensembles; crash-safe checkpoints with exact resume; DistributedDataParallel under ``torchrun``.

``train(TrainConfig(model="lenet5", data="mnist5k"))``, ``evaluate([checkpoint, ...], data)``,
``predict(checkpoint, [image, ...])``, ``visualize(checkpoint, out, image=None)``; the command line
(``python -m classicnets_ext train|evaluate|predict|visualize``) is ``cli.py``.
"""
from .checkpoint import atomic_save, latest_good, list_checkpoints, load_checkpoint
from .data import BUILTIN, DataError, check_data, open_data
from .evaluate import evaluate, predict
from .config import TrainConfig
from .loop import train
from .visualize import visualize

__all__ = ["BUILTIN", "DataError", "TrainConfig", "atomic_save", "check_data", "evaluate", "latest_good",
           "list_checkpoints", "load_checkpoint", "open_data", "predict", "train", "visualize"]
