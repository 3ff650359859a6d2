# Ablation: no fine stage -- no regressor or L1 loss; the number is the expectation over the bin anchors.
_base_ = ['../numclip_demo.py']
model = dict(head=dict(regressor=None, reg_loss=None, prediction='expectation'))
