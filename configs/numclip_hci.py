# NumCLIP on HCI (decade dating): concept tokens learnable, context frozen; the number is the expectation over the
# 5 decades (the regressor trains with the L1 loss but is not used for the metric). Paper: accuracy 69.61 %.
_base_ = [
    './_base_/models/numclip_vit_b16.py', './_base_/datasets/hci.py', './_base_/schedules/numclip_radam.py',
    './_base_/default_runtime.py'
]
model = dict(head=dict(task='hci', prediction='expectation'))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')  # fp16 as the paper; fp32 OptimWrapper on CPU
train_cfg = dict(max_epochs=100)
randomness = dict(seed=114514, deterministic=True)
