# NumCLIP on the embedded demo's tiny CLIP (64x64 images, 4-layer ViT, 2-layer text tower), starting from the
# packaged weights 'numclip-tiny-synth': contrastively pretrained on generated captioned images of counted shapes
# (docs/pretrained_tiny_clip.md), so that the concept words mean something, as in the paper.
# Random initialisation instead (the from-scratch table): --cfg-options model.clip.pretrained=None
# Both context and concept tokens learn.
_base_ = ['./numclip_vit_b16.py']
model = dict(
    clip=dict(_delete_=True, model_name='numclip-demo', pretrained='numclip-tiny-synth'),
    head=dict(task='count', prompt_learner=dict(learn_context=True)),
)
