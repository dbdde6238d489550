# NYU Depth v2 (795 train / 654 test images at 480x640, 40 classes) in the reference layout:
# datasets/NYUDepthv2/{RGB,Depth,Label}/, train.txt, test.txt.
# batch_size is DFormer's *global* batch (split over the processes); file_length is the
# number of training samples an epoch is sized for (iterations per epoch =
# file_length // batch_size + 1, the reference's rule).
_classes = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor mat', 'clothes', 'ceiling', 'books', 'refridgerator', 'television', 'paper', 'towel',
    'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
    'bathtub', 'bag', 'otherstructure', 'otherfurniture', 'otherprop')
_dataset = dict(
    type='NYUDepthv2',
    data_root='datasets/NYUDepthv2',
    data_prefix=dict(rgb='RGB', depth='Depth', label='Label'),
    rgb_suffix='.jpg',
    depth_suffix='.png',
    label_suffix='.png',
    reduce_zero_label=True,  # label 0 (unlabeled) -> 255 (ignored), 1..40 -> 0..39
    metainfo=dict(classes=_classes, palette='nyu', num_test_images=654))

train_dataloader = dict(
    batch_size=8,
    num_workers=16,
    dataset=dict(
        _dataset,
        ann_file='train.txt',
        file_length=795,
        pipeline=dict(type='RGBDTrainTransform', crop_size=(480, 640),
                      scales=[0.5, 0.75, 1, 1.25, 1.5, 1.75])))
val_dataloader = dict(
    batch_size=None,  # None: the reference's rule (the training batch for NYU)
    dataset=dict(_dataset, ann_file='test.txt', file_length=None,
                 pipeline=dict(type='RGBDEvalTransform')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
