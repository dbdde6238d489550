# SUN RGB-D (5285 train / 5050 test images of varying size, 37 classes) in the reference
# layout: datasets/SUNRGBD/{RGB,Depth,labels}/, train.txt, test.txt.
# batch_size is DFormer's *global* batch; file_length sizes the training epoch
# (iterations per epoch = file_length // batch_size + 1).
_classes = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor_mat', 'clothes', 'ceiling', 'books', 'fridge', 'tv', 'paper', 'towel', 'shower_curtain',
    'box', 'whiteboard', 'person', 'night_stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag')
_dataset = dict(
    type='SUNRGBD',
    data_root='datasets/SUNRGBD',
    data_prefix=dict(rgb='RGB', depth='Depth', label='labels'),
    rgb_suffix='.jpg',
    depth_suffix='.png',
    label_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=_classes, palette='nyu', num_test_images=5050))

train_dataloader = dict(
    batch_size=16,
    num_workers=16,
    dataset=dict(
        _dataset,
        ann_file='train.txt',
        file_length=5285,
        pipeline=dict(type='RGBDTrainTransform', crop_size=(480, 480),
                      scales=[0.5, 0.75, 1, 1.25, 1.5, 1.75])))
val_dataloader = dict(
    batch_size=None,  # None: the reference's rule (1 per process; 8 when padded)
    dataset=dict(_dataset, ann_file='test.txt', file_length=None,
                 pipeline=dict(type='RGBDEvalTransform')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
