"""Training defaults, in one place: ``TrainConfig`` uses them and ``camcli train --help`` shows
them. No imports, so the command line's start stays light."""

TRAIN = {
    "weights": "imagenet",
    "epochs": 30,
    "batch_size": 32,
    "lr": 0.01,
    "weight_decay": 0.0001,
    "img_size": 224,
    "resize": "keep-aspect",
    "val_split": 0.2,
    "seed": 0,
    "device": "auto",
    "backend": "auto",
}
