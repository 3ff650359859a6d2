# The OrdinalCLIP baseline's head, defined once for every ordinalclip_* config: one prompt per rank whose rank token
# interpolates 3 learnable base rank embeddings, learnable context, plain CE + plain text->image KL (no ordinal
# distance weighting), no regressor: the number is the expectation over the ranks. A config uses it as
# `model = dict(neck=None, head=_base_.ordinalclip_head)` and may set the head's task (a rank task).
ordinalclip_head = dict(
    prompt_learner=dict(_delete_=True, type='InterpolatedRankPromptLearner', num_base_ranks=3, learn_context=True),
    regressor=None, i2t_loss=dict(distance_weighted=False), t2i_loss=dict(distance_weighted=False), reg_loss=None,
    prediction='expectation')
