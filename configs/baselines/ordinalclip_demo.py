# OrdinalCLIP-style baseline: one prompt per rank (each count 0..9) whose token interpolates 3 learnable base rank
# embeddings, learnable context, plain CE + plain text->image KL, number = expectation over the ranks.
# Metrics are still computed on the 5 demo bins (the evaluator bins the predicted number).
_base_ = ['../numclip_demo.py']
rank_task = dict(name='count_ranks', edges=list(range(10)), concepts=[str(v) for v in range(10)],
                 context='a picture of objects, the number of objects is', upper=9)
model = dict(
    neck=None,
    head=dict(task=dict(_delete_=True, **rank_task),
              prompt_learner=dict(_delete_=True, type='InterpolatedRankPromptLearner', num_base_ranks=3,
                                  interpolation='linear', learn_context=True),
              regressor=None, i2t_loss=dict(distance_weighted=False), t2i_loss=dict(distance_weighted=False),
              reg_loss=None, prediction='expectation'),
)
train_dataloader = dict(dataset=dict(task=rank_task))
val_dataloader = dict(dataset=dict(task=rank_task))
test_dataloader = dict(dataset=dict(task=rank_task))
val_evaluator = dict(task='count')
test_evaluator = dict(task='count')
