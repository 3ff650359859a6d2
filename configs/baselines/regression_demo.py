# Plain regression baseline: the same image encoder with a linear head trained by L1; no text side at all.
_base_ = ['../numclip_demo.py']
model = dict(
    neck=None,
    head=dict(_delete_=True, type='OrdinalRegressionHead', task='count', loss=dict(type='L1RegressionLoss')),
)
