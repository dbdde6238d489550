# DFormerv2_L on NYUDepthv2 (local_configs.NYUDepthv2.DFormerv2_L); published single-model mIoU 58.4%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/nyudepthv2.py',
    '../_base_/schedules/schedule_500e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormerv2_Large_pretrained.pth',
    backbone=dict(type='DFormerv2_L', drop_path_rate=0.3),
    decode_head=dict(channels=1024, num_classes=40),
    test_cfg=dict(crop_size=(480, 640)))
train_dataloader = dict(batch_size=12, num_workers=0)
train_cfg = dict(max_iters=33500)  # 500 epochs x 67 iterations
