# Ablation: the language concepts replaced by plain numbers (each bin named by its range).
_base_ = ['../numclip_demo.py']
model = dict(head=dict(task=dict(_delete_=True, base='count',
                                 concepts=['0 or 1', '2 or 3', '4 or 5', '6 or 7', '8 or 9'])))
