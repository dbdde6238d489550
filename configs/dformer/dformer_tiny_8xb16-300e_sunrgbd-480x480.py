# DFormer-Tiny on SUNRGBD (local_configs.SUNRGBD.DFormer_Tiny); published single-model mIoU 48.8%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/sunrgbd.py',
    '../_base_/schedules/schedule_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormer_Tiny.pth.tar',
    backbone=dict(type='DFormer-Tiny', drop_path_rate=0.1),
    decode_head=dict(num_classes=37),
    test_cfg=dict(crop_size=(480, 480)))
