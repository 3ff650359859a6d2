# Zero-shot CLIP: fixed prompts "<context> <concept>.", frozen towers, no adapter or regressor, nothing trained.
# Evaluate only:  python tools/test.py configs/baselines/zeroshot_clip_demo.py   (no checkpoint)
_base_ = ['../numclip_demo.py']
model = dict(
    backbone=dict(frozen=True),
    neck=None,
    head=dict(prompt_learner=dict(learn_context=False, learn_concepts=False), regressor=None,
              i2t_loss=None, t2i_loss=None, reg_loss=None, prediction='expectation'),
)
