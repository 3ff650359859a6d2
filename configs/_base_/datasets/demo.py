# The embedded demo: generated 64x64 images showing 0..9 objects (task 'count'), deterministic by seed.
# Nothing to download; the images are generated in memory when the dataset is built.
train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs', algorithm_keys=['gt_value']),
]
test_pipeline = [dict(type='PackInputs', algorithm_keys=['gt_value'])]
dataset_type = 'DemoCountDataset'
train_dataloader = dict(
    batch_size=32, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, split='val', pipeline=test_pipeline, test_mode=True))
test_dataloader = dict(
    batch_size=64, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, split='test', pipeline=test_pipeline, test_mode=True))
val_evaluator = dict(type='OrdinalMetric')
test_evaluator = val_evaluator
