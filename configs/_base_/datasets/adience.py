# Adience, 5-fold subject-exclusive cross-validation from the fold_{k}_data.txt files (8 age groups).
_base_ = ['./pipelines_224.py']
data_root = 'data/adience'
dataset_type = 'AdienceDataset'
test_fold = 0
train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, folds=[k for k in range(5) if k != test_fold],
                 pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, folds=[test_fold],
                 pipeline={{_base_.test_pipeline}}, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='OrdinalMetric')
test_evaluator = val_evaluator
