# DFormer-Small on SUNRGBD (local_configs.SUNRGBD.DFormer_Small); published single-model mIoU 50.0%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/sunrgbd.py',
    '../_base_/schedules/schedule_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormer_Small.pth.tar',
    backbone=dict(type='DFormer-Small', drop_path_rate=0.1),
    decode_head=dict(num_classes=37),
    test_cfg=dict(crop_size=(480, 480)))
