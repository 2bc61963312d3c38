"""Defaults and fixed choices, in one place: the library checks values against them and the
command line's parser lists and checks them in --help. No imports, so the command line's start
stays light."""

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

MIN_IMG_SIZE, MAX_IMG_SIZE = 32, 2048  # input sizes; beyond 2048 one batch of inputs alone takes tens of GB

# predict, overlay, evaluate
BATCH_SIZE = 32  # images per forward pass
TOP_K = 5  # classes per row
MAX_FORWARD_PIXELS = 1 << 22  # input pixels in one forward pass (2048 x 2048): larger batches are split, a larger image refused
MAX_PIXELS = 178_956_970  # images declaring more are refused before decoding: Pillow's decompression-bomb limit (2 x 89,478,485)
PAPER_THRESHOLD = 0.2  # the CAM paper's box threshold (fraction of the min-max normalized map)
ALPHA = 0.5  # heatmap weight in an overlay's blend

# the fixed choices (a value outside them is refused by the parser, in one line)
DEVICES = ("auto", "cpu", "cuda", "mps")
BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = ("fp32", "int8")  # the backbone's arithmetic (int8: ONNX Runtime on the CPU, see camcli.quantize)
RESIZE_MODES = ("squash", "keep-aspect")
NORMALIZATIONS = ("shared", "relu", "minmax")
FORMATS = ("table", "csv", "json", "jsonl")
ENGINES = ("local", "ray")
# OpenCV's colormaps (cv2.COLORMAP_<NAME>), in OpenCV's order; a test checks the list is complete
COLORMAPS = ("autumn", "bone", "jet", "winter", "rainbow", "ocean", "summer", "spring", "cool", "hsv", "pink", "hot", "parula",
             "magma", "inferno", "plasma", "viridis", "cividis", "twilight", "twilight_shifted", "turbo", "deepgreen")
SANITY_IMAGES = 32  # images evaluate --sanity checks at each step of its cascade, spread over DATA
SANITY_MAX_SPEARMAN = 0.5  # a method passes --sanity when, every layer randomized, its maps correlate less (Spearman, absolute)
CALIBRATION_CAM_SIZES = (224, 320, 448)  # map sizes evaluate --calibrate tries (each input well under MAX_FORWARD_PIXELS)
INT8_PROBE_IMAGES = 8  # each INT8 run's first inputs (not near ties) that also run in fp32: INT8 checked on what it is used on
