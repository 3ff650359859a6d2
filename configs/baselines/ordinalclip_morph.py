# OrdinalCLIP-style baseline on MORPH II: one prompt per age 16..77 (62 ranks) interpolated from 3 learnable base
# rank embeddings, learnable context, plain CE + plain KL, number = expectation over the ranks. Metrics on the age
# bins of task 'age' (the evaluator bins the predicted number).
_base_ = ['../numclip_morph.py']
rank_task = dict(name='age_ranks', edges=list(range(16, 78)), concepts=[str(v) for v in range(16, 78)],
                 context='age estimation: the age of the person is', upper=77)
model = dict(
    neck=None,
    head=dict(task=dict(_delete_=True, **rank_task),
              prompt_learner=dict(_delete_=True, type='InterpolatedRankPromptLearner', num_base_ranks=3,
                                  learn_context=True),
              regressor=None, i2t_loss=dict(distance_weighted=False), t2i_loss=dict(distance_weighted=False),
              reg_loss=None, prediction='expectation'),
)
train_dataloader = dict(dataset=dict(task=rank_task))
val_dataloader = dict(dataset=dict(task=rank_task))
test_dataloader = val_dataloader
val_evaluator = dict(task='age')
test_evaluator = val_evaluator
