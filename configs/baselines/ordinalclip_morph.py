# OrdinalCLIP-style baseline on MORPH II: one prompt per age 16..77 (task 'age_ranks', 62 ranks; head in
# configs/_base_/models/ordinalclip_head.py). Metrics on the age bins of task 'age' (the evaluator bins the number).
_base_ = ['../numclip_morph.py', '../_base_/models/ordinalclip_head.py']
rank_task = 'age_ranks'
rank_head = dict(_base_.ordinalclip_head, task=rank_task)
model = dict(neck=None, head=rank_head)
train_dataloader = dict(dataset=dict(task=rank_task))
val_dataloader = dict(dataset=dict(task=rank_task))
test_dataloader = val_dataloader
val_evaluator = dict(task='age')
test_evaluator = val_evaluator
