# Zero-shot CLIP on aesthetics: fixed prompts, frozen towers, nothing trained. Evaluate only (no checkpoint):
#   python tools/test.py configs/baselines/zeroshot_clip_aesthetics.py
_base_ = ['../numclip_aesthetics.py']
model = dict(
    backbone=dict(frozen=True),
    neck=None,
    head=dict(prompt_learner=dict(learn_context=False, learn_concepts=False), regressor=None,
              i2t_loss=None, t2i_loss=None, reg_loss=None, prediction='expectation'),
)
