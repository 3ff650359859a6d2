# MORPH II with the OrdinalCLIP/NumCLIP lists (`path age` per line). As in the released configs the validation list
# is the test list; point val_dataloader at a held-out list for an honest model selection.
_base_ = ['./pipelines_224.py']
data_root = 'data/morph'
dataset_type = 'MorphDataset'
train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='ET_proto_train.txt', data_prefix='images',
                 pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='ET_proto_val.txt', data_prefix='images',
                 pipeline={{_base_.test_pipeline}}, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='OrdinalMetric')
test_evaluator = val_evaluator
