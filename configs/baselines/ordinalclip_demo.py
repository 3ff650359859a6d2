# OrdinalCLIP-style baseline on the demo: one prompt per count 0..9 (task 'count_ranks', linear interpolation of the
# rank tokens; head in configs/_base_/models/ordinalclip_head.py). Metrics are still computed on the 5 demo bins of
# task 'count' (the evaluator bins the predicted number).
_base_ = ['../numclip_demo.py', '../_base_/models/ordinalclip_head.py']
rank_task = 'count_ranks'
rank_head = dict(_base_.ordinalclip_head, task=rank_task)
rank_head['prompt_learner'] = dict(rank_head['prompt_learner'], interpolation='linear')
model = dict(neck=None, head=rank_head)
train_dataloader = dict(dataset=dict(task=rank_task))
val_dataloader = dict(dataset=dict(task=rank_task))
test_dataloader = dict(dataset=dict(task=rank_task))
val_evaluator = dict(task='count')
test_evaluator = dict(task='count')
