# CoOp-style baseline: learnable context tokens (random init), fixed concept words, plain cross-entropy,
# no adapter, no regressor; the number is the expectation over the bins.
_base_ = ['../numclip_demo.py']
model = dict(
    neck=None,
    head=dict(prompt_learner=dict(learn_context=True, learn_concepts=False, num_random_context=8), regressor=None,
              i2t_loss=dict(distance_weighted=False), t2i_loss=None, reg_loss=None, prediction='expectation'),
)
