# A short schedule for the demo: the same RAdam/MultiStep shape as the method, scaled to a from-scratch tiny model.
_base_ = ['./numclip_radam.py']
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = dict(milestones=[24])
train_cfg = dict(max_epochs=30, val_interval=5)
