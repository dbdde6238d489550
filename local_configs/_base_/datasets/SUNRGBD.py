"""SUN RGB-D: 5285 train / 5050 test images of varying size (up to 531x730), 37 classes."""
from .. import base_config, dataset_paths

CLASS_NAMES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
    "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
]


def dataset_config():
    C = dataset_paths(base_config(), "SUNRGBD", label_folder="labels")
    C.num_train_imgs = 5285
    C.num_eval_imgs = 5050
    C.num_classes = 37
    C.class_names = list(CLASS_NAMES)
    C.image_height = 480
    C.image_width = 480
    C.palette = "nyu"
    # training schedule shared by the SUNRGBD configs (model configs override)
    C.lr = 8e-5
    C.batch_size = 16
    C.nepochs = 300
    C.num_workers = 16
    C.checkpoint_start_epoch = 200
    C.eval_crop_size = [480, 480]
    return C
