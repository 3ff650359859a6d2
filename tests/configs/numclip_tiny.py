# A tiny random-initialised NumCLIP (32x32 inputs) for tests and benchmarks only (inference: no schedule, no data).
custom_imports = dict(imports=['numclip_mm.register'], allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(
    type='NumCLIP',
    clip=dict(model_name='numclip-tiny', pretrained=None),
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3, to_rgb=True),
    backbone=dict(type='OpenCLIPVisionBackbone'),
    neck=dict(type='ResidualAdapter'),
    head=dict(type='NumCLIPHead', task='count'),
)
test_dataloader = dict(
    dataset=dict(pipeline=[dict(type='Resize', scale=(32, 32)), dict(type='PackInputs', algorithm_keys=['gt_value'])]))
