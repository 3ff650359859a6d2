# NumCLIP on Adience (8 age groups, 5-fold CV; set test_fold=k). No NumCLIP result is published for Adience.
_base_ = [
    './_base_/models/numclip_vit_b16.py', './_base_/datasets/adience.py', './_base_/schedules/numclip_radam.py',
    './_base_/default_runtime.py'
]
model = dict(head=dict(task='adience', prediction='expectation'))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')  # fp16 as the paper; fp32 OptimWrapper on CPU
train_cfg = dict(max_epochs=100)
randomness = dict(seed=114514, deterministic=True)
