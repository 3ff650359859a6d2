# The method's schedule (doc section 4): RAdam, weight decay 0, per-group learning rates, x0.1 at epoch 60.
# Learning rates by parameter name: image encoder, adapter, regressor and concept tokens 1e-5; context tokens
# follow the model's `learn_context` (0 when frozen: frozen parameters get no gradient).
optim_wrapper = dict(
    optimizer=dict(type='RAdam', lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0),
    paramwise_cfg=dict(custom_keys={
        'backbone': dict(lr_mult=1.0),
        'neck': dict(lr_mult=1.0),
        'head.regressor': dict(lr_mult=1.0),
        'head.prompt_learner': dict(lr_mult=1.0),
    }),
)
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[60], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
