# NumCLIP on MORPH II (age): CLIP ViT-B/16, concept tokens learnable, context frozen, regressor output, 200 epochs.
# Paper: MAE 2.08.   python tools/train.py configs/numclip_morph.py
_base_ = [
    './_base_/models/numclip_vit_b16.py', './_base_/datasets/morph.py', './_base_/schedules/numclip_radam.py',
    './_base_/default_runtime.py'
]
model = dict(head=dict(task='age', prediction='regressor'))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')  # fp16 as the paper; fp32 OptimWrapper on CPU
train_cfg = dict(max_epochs=200)
randomness = dict(seed=114514, deterministic=True)
