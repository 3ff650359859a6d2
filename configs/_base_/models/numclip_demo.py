# NumCLIP on the tiny random-initialised CLIP of the embedded demo (64x64 images, 4-layer ViT, 2-layer text tower).
# With no pretrained CLIP, both context and concept tokens learn.
_base_ = ['./numclip_vit_b16.py']
model = dict(
    clip=dict(_delete_=True, model_name='numclip-demo', pretrained=None),
    head=dict(task='count', prompt_learner=dict(learn_context=True)),
)
