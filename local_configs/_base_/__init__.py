"""Defaults shared by every config, with the values the reference's configs set."""
import os.path as osp

from easydict import EasyDict


def base_config():
    """Fresh config holding the settings common to all experiments."""
    C = EasyDict()
    C.seed = 12345
    C.root_dir = "datasets"
    # optimisation (identical in all official configs)
    C.optimizer = "AdamW"
    C.lr_power = 0.9
    C.momentum = 0.9
    C.weight_decay = 0.01
    C.warm_up_epoch = 10
    C.train_scale_array = [0.5, 0.75, 1, 1.25, 1.5, 1.75]
    C.bn_eps = 1e-3
    C.bn_momentum = 0.1
    C.aux_rate = 0.0
    C.decoder = "ham"
    C.decoder_embed_dim = 512
    # The reference optimiser never updates some tensors (DFormer custom LayerNorms and
    # layer scales, DFormerv2 geometry weights and gammas); True trains them too.
    C.train_all_params = False
    # evaluation
    C.eval_stride_rate = 2 / 3
    C.eval_scale_array = [0.5, 0.75, 1.0, 1.25, 1.5]  # --mst / --tta: these scales ...
    C.eval_flip = True                                 # ... and the horizontal flip
    C.pad_SUNRGBD = False
    C.checkpoint_step = 25
    return C


def dataset_paths(C, name, label_folder="Label"):
    """Fill the dataset-layout fields for datasets/<name>/{RGB,Depth,<label_folder>}."""
    C.dataset_name = name
    C.dataset_path = osp.join(C.root_dir, name)
    C.rgb_root_folder = osp.join(C.dataset_path, "RGB")
    C.rgb_format = ".jpg"
    C.gt_root_folder = osp.join(C.dataset_path, label_folder)
    C.gt_format = ".png"
    C.gt_transform = True
    C.x_root_folder = osp.join(C.dataset_path, "Depth")
    C.x_format = ".png"
    C.x_is_single_channel = True
    C.train_source = osp.join(C.dataset_path, "train.txt")
    C.eval_source = osp.join(C.dataset_path, "test.txt")
    C.background = 255
    C.norm_mean = [0.485, 0.456, 0.406]
    C.norm_std = [0.229, 0.224, 0.225]
    C.color_order = "BGR"  # channel order fed to the network (the reference keeps cv2's BGR)
    return C


def finalize(C):
    """Derive the fields that depend on others (iterations per epoch, output folder)."""
    C.niters_per_epoch = C.num_train_imgs // C.batch_size + 1
    C.eval_crop_size = list(C.get("eval_crop_size", [C.image_height, C.image_width]))
    # Runs go to <log_dir>/<timestamp> unless --work-dir is given; the timestamp is
    # taken when a run starts, never at import.
    C.log_dir = osp.join("checkpoints", f"{C.dataset_name}_{C.backbone}")
    return C
