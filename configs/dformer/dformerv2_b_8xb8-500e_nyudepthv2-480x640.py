# DFormerv2_B on NYUDepthv2 (local_configs.NYUDepthv2.DFormerv2_B); published single-model mIoU 57.7%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/nyudepthv2.py',
    '../_base_/schedules/schedule_500e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormerv2_Base_pretrained.pth',
    backbone=dict(type='DFormerv2_B', drop_path_rate=0.2),
    decode_head=dict(num_classes=40),
    test_cfg=dict(crop_size=(480, 640)))
train_dataloader = dict(num_workers=0)
