"""Contrastive pretraining of the demo-size CLIP on generated image-caption pairs (docs/pretrained_tiny_clip.md).

NumCLIP's premise (docs/method.md §1-§3) is that a *pretrained* CLIP already ties quantity words ("a few", "many")
to images. The demo's CLIP is tiny and cannot load OpenAI's weights, so these modules give it a miniature of that
pretraining: captions that talk about counts, colours, shapes and sizes, on images kept apart from the demo's
train/val/test images (other shapes, one shape and colour per image, plain backgrounds).
"""
from .._setup import prepare_runtime

prepare_runtime()  # before open_clip is imported: torchvision must be importable first (numclip_mm/_setup.py)
