# Ablation: no residual adapter on the image feature.
_base_ = ['../numclip_demo.py']
model = dict(neck=None)
