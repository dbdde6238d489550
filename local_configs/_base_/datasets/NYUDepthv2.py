"""NYU Depth v2: 795 train / 654 test images at 480x640, 40 classes."""
from .. import base_config, dataset_paths

CLASS_NAMES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]


def dataset_config():
    C = dataset_paths(base_config(), "NYUDepthv2", label_folder="Label")
    C.num_train_imgs = 795
    C.num_eval_imgs = 654
    C.num_classes = 40
    C.class_names = list(CLASS_NAMES)
    C.image_height = 480
    C.image_width = 640
    C.palette = "nyu"
    # training schedule shared by the NYUDepthv2 configs (model configs override)
    C.lr = 6e-5
    C.batch_size = 8
    C.nepochs = 500
    C.num_workers = 16
    C.checkpoint_start_epoch = 250
    C.eval_crop_size = [480, 640]
    return C
