# Quick start: DFormer-Tiny trained from scratch on the synthetic SynthRGBD dataset
# (local_configs.SynthRGBD.DFormer_Tiny), sized for a 2-core CPU: about 9 minutes of training.
#   python tools/train.py configs/dformer/dformer_tiny_8xb8-10e_synthrgbd-160x160.py
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/synthrgbd.py',
    '../_base_/schedules/schedule_500e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained=None,  # no ImageNet weights offline
    backbone=dict(type='DFormer-Tiny', drop_path_rate=0.1),
    decode_head=dict(num_classes=8),
    test_cfg=dict(crop_size=(240, 320)))
optim_wrapper = dict(
    optimizer=dict(lr=6e-4),
    # from scratch the tensors the reference never updates (DFormer layer scales start at
    # 1e-6 and switch every block off) must be trained too
    paramwise_cfg=dict(train_all_params=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0, end_factor=1.0, begin=0, end=1, by_epoch=True,
         convert_to_iter_based=True),
    dict(type='PolyLR', power=0.9, eta_min=0, begin=0, end=10, by_epoch=True,
         convert_to_iter_based=True),
]
# 10 epochs x (400 // 8 + 1) iterations; validation after epochs 1 and 10
train_cfg = dict(max_iters=510, checkpoint_start_epoch=10)
