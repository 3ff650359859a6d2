# Plain regression baseline on morph: CLIP image encoder + linear head trained with L1.
_base_ = ['../numclip_morph.py']
model = dict(neck=None, head=dict(_delete_=True, type='OrdinalRegressionHead', task='age'))
