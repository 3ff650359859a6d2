# NumCLIP on the embedded demo: python tools/train.py configs/numclip_demo.py
_base_ = [
    './_base_/models/numclip_demo.py', './_base_/datasets/demo.py', './_base_/schedules/demo.py',
    './_base_/default_runtime.py'
]
randomness = dict(seed=114514, deterministic=False)
# --show-dir: draw the 64 px images 4x larger so that the predicted concept and score are readable
default_hooks = dict(visualization=dict(type='VisualizationHook', enable=False, rescale_factor=4))
