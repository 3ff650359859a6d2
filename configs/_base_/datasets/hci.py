# Historical Colour Images (HCI), fold lists labels/fold_{k}/{train,val,test}.txt with `path decade` per line.
_base_ = ['./pipelines_224.py']
data_root = 'data/hci'
dataset_type = 'HCIDataset'
fold = 0
train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, fold=fold, split='train',
                 pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, fold=fold, split='val',
                 pipeline={{_base_.test_pipeline}}, test_mode=True))
test_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, fold=fold, split='test',
                 pipeline={{_base_.test_pipeline}}, test_mode=True))
val_evaluator = dict(type='OrdinalMetric')
test_evaluator = val_evaluator
