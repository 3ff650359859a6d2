# OrdinalCLIP-style baseline on hci: the grades are the ranks (see configs/_base_/models/ordinalclip_head.py).
_base_ = ['../numclip_hci.py', '../_base_/models/ordinalclip_head.py']
model = dict(neck=None, head=_base_.ordinalclip_head)
