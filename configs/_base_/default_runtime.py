# mmpretrain's own runtime (hooks, logging, visualizer, env), plus numclip_mm's registration.
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['numclip_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

# Keep the checkpoint with the lowest validation MAE, as the method does, and the latest one.
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='mae', rule='less'),
    logger=dict(type='LoggerHook', interval=20),
)
# gloo works everywhere (CPU DDP); CUDA runs may switch to nccl with --cfg-options env_cfg.dist_cfg.backend=nccl
env_cfg = dict(dist_cfg=dict(backend='gloo'))
