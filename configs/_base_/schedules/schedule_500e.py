# The NYU Depth v2 schedule of the reference: AdamW, lr 6e-5, 500 epochs, linear warm-up
# over the first 10 epochs then poly (power 0.9) over the whole run. The pair below is how
# that schedule is written here (warm-up from 0; poly starting at 0, not after the
# warm-up); the lr changes every iteration, one step behind, as in the reference.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    # False: the reference's parameter groups (some tensors are never updated)
    paramwise_cfg=dict(train_all_params=False))
param_scheduler = [
    dict(type='LinearLR', start_factor=0, end_factor=1.0, begin=0, end=10, by_epoch=True,
         convert_to_iter_based=True),
    dict(type='PolyLR', power=0.9, eta_min=0, begin=0, end=500, by_epoch=True,
         convert_to_iter_based=True),
]
# max_iters = 500 epochs x (795 // 8 + 1) iterations; it follows the schedule when the batch
# size or file_length is overridden (set it explicitly to stop earlier).
# val_interval='reference': validate after epoch 1, every 10 epochs, every epoch after
# checkpoint_start_epoch, and at the end; an integer k: every k iterations and at the end.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=50000, val_interval='reference',
                 checkpoint_start_epoch=250)
