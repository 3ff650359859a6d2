# CoOp-style baseline on adience: learnable random context (16 tokens), fixed concept words, plain CE.
_base_ = ['../numclip_adience.py']
model = dict(
    neck=None,
    head=dict(prompt_learner=dict(learn_context=True, learn_concepts=False, num_random_context=16), regressor=None,
              i2t_loss=dict(distance_weighted=False), t2i_loss=None, reg_loss=None, prediction='expectation'),
)
