# The method's schedule (docs/method.md §10): RAdam, weight decay 0, x0.1 at epoch 60, no warm-up.
# One learning rate for everything that trains: the method gives the image encoder, the adapter, the regressor, the
# concept tokens and (aesthetics only) the context tokens the same 1e-5, so no per-group lr_mult is needed. Its
# "lr 0" groups (text tower, logit scale, frozen context tokens) are frozen in the model (requires_grad=False):
# they get no gradient and RAdam never changes them.
optim_wrapper = dict(optimizer=dict(type='RAdam', lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0))
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[60], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
