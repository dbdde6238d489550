# The SUN RGB-D schedule of the reference: AdamW, lr 8e-5, 300 epochs, linear warm-up over
# the first 10 epochs then poly (power 0.9) over the whole run (see schedule_500e.py).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=8e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    paramwise_cfg=dict(train_all_params=False))
param_scheduler = [
    dict(type='LinearLR', start_factor=0, end_factor=1.0, begin=0, end=10, by_epoch=True,
         convert_to_iter_based=True),
    dict(type='PolyLR', power=0.9, eta_min=0, begin=0, end=300, by_epoch=True,
         convert_to_iter_based=True),
]
# 300 epochs x (5285 // 16 + 1) iterations
train_cfg = dict(type='IterBasedTrainLoop', max_iters=99300, val_interval='reference',
                 checkpoint_start_epoch=200)
