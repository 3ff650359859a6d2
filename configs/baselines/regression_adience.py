# Plain regression baseline on adience: CLIP image encoder + linear head trained with L1.
_base_ = ['../numclip_adience.py']
model = dict(neck=None, head=dict(_delete_=True, type='OrdinalRegressionHead', task='adience'))
