# Plain regression baseline on hci: CLIP image encoder + linear head trained with L1.
_base_ = ['../numclip_hci.py']
model = dict(neck=None, head=dict(_delete_=True, type='OrdinalRegressionHead', task='hci'))
