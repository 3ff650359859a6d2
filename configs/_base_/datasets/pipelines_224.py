# The method's augmentation (docs/method.md §10): resize 256x256 -> random crop 224 -> horizontal flip; test: resize
# 256x256 -> centre crop 224. Images may be files or bytes (LoadOrdinalImage reads both).
train_pipeline = [
    dict(type='LoadOrdinalImage'),
    dict(type='Resize', scale=(256, 256)),
    dict(type='RandomCrop', crop_size=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs', algorithm_keys=['gt_value']),
]
test_pipeline = [
    dict(type='LoadOrdinalImage'),
    dict(type='Resize', scale=(256, 256)),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs', algorithm_keys=['gt_value']),
]
