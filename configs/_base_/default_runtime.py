# mmpretrain's own runtime (hooks, logging, visualizer, env), plus numclip_mm's registration.
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['numclip_mm.register'], allow_failed_imports=False)
default_scope = 'mmpretrain'

# Keep the checkpoint with the lowest validation MAE, as the method does, and the latest one.
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='mae', rule='less'),
    logger=dict(type='LoggerHook', interval=20),
)
# 'auto': NCCL where CUDA is available, gloo (CPU DDP) otherwise, decided when the run starts
# (numclip_mm.engine.choose_dist_backend). Name a backend here or with --cfg-options to force one.
env_cfg = dict(dist_cfg=dict(backend='auto'))
# Checkpoints (load_from, --resume, tools/test.py) load weights-only and strictly: one that does not fit the model is
# an error naming the file and keys. load_strict = False (tools/train.py --partial-load) allows partial loading, e.g.
# to fine-tune from another task's checkpoint.
runner_type = 'StrictLoadRunner'
load_strict = True
