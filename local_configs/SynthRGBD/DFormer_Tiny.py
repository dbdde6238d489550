"""DFormer-Tiny on the synthetic SynthRGBD dataset, trained from scratch on a CPU."""
from .._base_ import finalize
from .._base_.datasets.SynthRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormer-Tiny"
C.pretrained_model = None  # no ImageNet weights offline: train from scratch
# From scratch the tensors the reference optimiser never updates would stay at their
# initial values (DFormer layer scales 1e-6 switch every block off): train them all.
C.train_all_params = True
C.decoder_embed_dim = 512
# Schedule sized for a 2-core CPU: about 9 minutes of training (see README, Quick start figures).
C.lr = 6e-4
C.batch_size = 8
C.nepochs = 10
C.warm_up_epoch = 1
C.drop_path_rate = 0.1
C.num_workers = 0  # on 2 cores loading in the training process is fastest (README)
C.checkpoint_start_epoch = 10  # validate after epochs 1 and 10
C.eval_crop_size = [240, 320]
finalize(C)
config = C
