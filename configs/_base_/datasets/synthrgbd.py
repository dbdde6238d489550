# SynthRGBD: the embedded synthetic indoor RGB-D dataset (400 train / 100 test at 240x320,
# 8 classes), generated into data_root on first use (utils/dataloader/synthetic.py).
# Training crops are 160x160 so that a CPU epoch stays short.
_dataset = dict(
    type='SynthRGBD',
    data_root='datasets/SynthRGBD',
    data_prefix=dict(rgb='RGB', depth='Depth', label='Label'),
    rgb_suffix='.png',
    depth_suffix='.png',
    label_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=('wall', 'floor', 'poster', 'box', 'rug', 'platform', 'cabinet',
                           'ball'),
                  palette='nyu', num_test_images=100),
    # generator settings (a folder generated with others is refused, not overwritten)
    synthetic=dict(seed=0, size=(240, 320), num_train=400, num_test=100))

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    dataset=dict(
        _dataset,
        ann_file='train.txt',
        file_length=400,
        pipeline=dict(type='RGBDTrainTransform', crop_size=(160, 160),
                      scales=[0.75, 1, 1.25])))
val_dataloader = dict(
    batch_size=None,
    dataset=dict(_dataset, ann_file='test.txt', file_length=None,
                 pipeline=dict(type='RGBDEvalTransform')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
