# Run-time settings shared by every experiment.
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# latest.pkl after every epoch (by_epoch=False, interval=k: also every k iterations);
# best.pkl whenever the validation mIoU improves.
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=1))
randomness = dict(seed=12345)
# test-time augmentation of tools/test.py --tta: the reference's 5 scales + flip
tta = dict(scales=[0.5, 0.75, 1.0, 1.25, 1.5], flip=True)
work_dir = None   # None: checkpoints/<dataset>_<backbone>/<timestamp>
load_from = None  # weights to start from (train) or to evaluate (test)
