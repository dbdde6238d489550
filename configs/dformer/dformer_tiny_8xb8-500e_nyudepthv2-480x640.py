# DFormer-Tiny on NYUDepthv2 (local_configs.NYUDepthv2.DFormer_Tiny); published single-model mIoU 51.8%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/nyudepthv2.py',
    '../_base_/schedules/schedule_500e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormer_Tiny.pth.tar',
    backbone=dict(type='DFormer-Tiny', drop_path_rate=0.1),
    decode_head=dict(num_classes=40),
    test_cfg=dict(crop_size=(480, 640)))
