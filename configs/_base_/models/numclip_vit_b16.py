# NumCLIP on CLIP ViT-B/16 (docs/method.md §3-§5, §10). `pretrained='openai'` is resolved from the local cache
# (~/.cache/clip/ViT-B-16.pt or $NUMCLIP_CLIP_CACHE); a file path works too. Nothing is downloaded.
model = dict(
    type='NumCLIP',
    clip=dict(model_name='ViT-B-16', pretrained='openai'),
    data_preprocessor=dict(  # ImageNet statistics, as the released code (not CLIP's own)
        type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
    backbone=dict(type='OpenCLIPVisionBackbone', frozen=False),
    neck=dict(type='ResidualAdapter', reduction=4, ratio=0.8),
    head=dict(
        type='NumCLIPHead',
        task='age',
        prompt_learner=dict(type='ConceptPromptLearner', learn_context=False, learn_concepts=True),
        regressor=dict(type='SSRRegressor', lam=1.0),
        i2t_loss=dict(type='FCRCImageTextLoss', form='code', loss_weight=1.0),
        t2i_loss=dict(type='FCRCTextImageLoss', sharpness=10.0, loss_weight=1.0),
        reg_loss=dict(type='L1RegressionLoss', loss_weight=1.0),
        prediction='regressor',
    ),
)
