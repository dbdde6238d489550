# The segmentor shared by every DFormer / DFormerv2 experiment: an encoder-decoder with
# the LightHamHead decoder, as in the reference's local_configs/_base_.
# Experiments set model.pretrained, model.backbone, decode_head.num_classes and
# test_cfg.crop_size.
model = dict(
    type='EncoderDecoder',
    # mean/std on the 0..1 scale (the reference divides by 255 first); bgr_to_rgb=False
    # feeds OpenCV's BGR order as the reference does. pad_sunrgbd: evaluate padded to
    # 531x730 (the released SUN RGB-D DFormerv2 models).
    data_preprocessor=dict(
        type='RGBDDataPreprocessor',
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        bgr_to_rgb=False,
        pad_sunrgbd=False),
    pretrained=None,
    backbone=dict(type='DFormer-Base', drop_path_rate=0.1),
    decode_head=dict(
        type='LightHamHead',
        channels=512,
        num_classes=40,
        ignore_index=255,
        norm_cfg=dict(type='SyncBN', eps=1e-3, momentum=0.1)),
    auxiliary_head=None,
    # sliding-window inference (--sliding): window and stride as a fraction of it
    test_cfg=dict(crop_size=(480, 640), stride_rate=2 / 3))
