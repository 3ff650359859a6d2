# OrdinalCLIP-style baseline on aesthetics: the grades are the ranks; rank tokens interpolated from 3 learnable base
# embeddings, learnable context, plain CE + plain KL, number = expectation over the ranks.
_base_ = ['../numclip_aesthetics.py']
model = dict(
    neck=None,
    head=dict(prompt_learner=dict(_delete_=True, type='InterpolatedRankPromptLearner', num_base_ranks=3,
                                  learn_context=True),
              regressor=None, i2t_loss=dict(distance_weighted=False), t2i_loss=dict(distance_weighted=False),
              reg_loss=None, prediction='expectation'),
)
