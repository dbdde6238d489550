"""SynthRGBD: embedded synthetic indoor RGB-D dataset (400 train / 100 test at 240x320, 8 classes).

Generated on first use by ``utils.dataloader.synthetic`` (``synthetic = True``) into
datasets/SynthRGBD, in the NYUDepthv2 layout. Two class pairs (poster/box, rug/platform)
look identical in colour and differ only in depth, so depth-aware models can separate them.
"""
from .. import base_config, dataset_paths

CLASS_NAMES = ["wall", "floor", "poster", "box", "rug", "platform", "cabinet", "ball"]


def dataset_config():
    C = dataset_paths(base_config(), "SynthRGBD", label_folder="Label")
    C.rgb_format = ".png"  # lossless, no JPEG noise
    C.synthetic = True
    C.synthetic_seed = 0  # generator seed (changing it needs a fresh datasets/SynthRGBD)
    C.num_train_imgs = 400
    C.num_eval_imgs = 100
    C.num_classes = len(CLASS_NAMES)
    C.class_names = list(CLASS_NAMES)
    C.synthetic_size = (240, 320)  # generated image size (height, width)
    # Training crop: smaller than the images so that a CPU epoch stays short; evaluation
    # runs on the full 240x320 images.
    C.image_height = 160
    C.image_width = 160
    C.palette = "nyu"
    # Images are 240x320 already: a moderate scale range keeps crops informative on CPU.
    C.train_scale_array = [0.75, 1, 1.25]
    return C
