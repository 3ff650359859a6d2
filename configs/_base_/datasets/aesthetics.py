# Image Aesthetics (Schifanella et al.), per-category lists {category}_{train,test}.txt with `path grade`.
# category='all' concatenates animals, nature, people and urban. Val = test as in the released configs.
_base_ = ['./pipelines_224.py']
data_root = 'data/aesthetics'
dataset_type = 'AestheticsDataset'
category = 'all'
train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, category=category, split='train',
                 pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, category=category, split='test',
                 pipeline={{_base_.test_pipeline}}, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='OrdinalMetric', items=('mae', 'accuracy', 'off_by_one', 'qwk'))
test_evaluator = val_evaluator
