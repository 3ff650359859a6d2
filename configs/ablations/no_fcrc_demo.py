# Ablation: FCRC off -- plain (unweighted) image->text CE and text->image KL; everything else as NumCLIP.
_base_ = ['../numclip_demo.py']
model = dict(head=dict(i2t_loss=dict(distance_weighted=False), t2i_loss=dict(distance_weighted=False)))
