# Plain regression baseline on aesthetics: CLIP image encoder + linear head trained with L1.
_base_ = ['../numclip_aesthetics.py']
model = dict(neck=None, head=dict(_delete_=True, type='OrdinalRegressionHead', task='aesthetics'))
