# NumCLIP on Image Aesthetics: context and concept tokens learnable; expectation over the 5 grades.
# Paper: overall accuracy 76.53 %, MAE 0.23.
_base_ = [
    './_base_/models/numclip_vit_b16.py', './_base_/datasets/aesthetics.py', './_base_/schedules/numclip_radam.py',
    './_base_/default_runtime.py'
]
model = dict(head=dict(task='aesthetics', prediction='expectation', prompt_learner=dict(learn_context=True)))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')  # fp16 as the paper; fp32 OptimWrapper on CPU
train_cfg = dict(max_epochs=100)
randomness = dict(seed=114514, deterministic=True)
