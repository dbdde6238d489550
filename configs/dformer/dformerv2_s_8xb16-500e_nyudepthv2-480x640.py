# DFormerv2_S on NYUDepthv2 (local_configs.NYUDepthv2.DFormerv2_S); published single-model mIoU 56.0%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/nyudepthv2.py',
    '../_base_/schedules/schedule_500e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormerv2_Small_pretrained.pth',
    backbone=dict(type='DFormerv2_S', drop_path_rate=0.25),
    decode_head=dict(num_classes=40),
    test_cfg=dict(crop_size=(480, 640)))
train_dataloader = dict(batch_size=16, num_workers=0)
train_cfg = dict(max_iters=25000)  # 500 epochs x 50 iterations
