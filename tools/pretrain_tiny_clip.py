"""Pretrain the demo-size CLIP contrastively on generated image-caption pairs and write its weights.

The shipped file ``numclip_mm/models/pretrained/numclip-demo-synth.safetensors`` (tag ``numclip-tiny-synth``) was
made by the default command below; docs/pretrained_tiny_clip.md says how and what the miniature can tell.

    nice python tools/pretrain_tiny_clip.py --out numclip_mm/models/pretrained/numclip-demo-synth.safetensors
"""
import argparse
import json
import os
import os.path as osp
from dataclasses import fields

from numclip_mm.pretraining.clip_pretraining import PretrainConfig, pretrain, save_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='output .safetensors file (fp16; read by the CLIP loader)')
    for f in fields(PretrainConfig):
        parser.add_argument('--' + f.name.replace('_', '-'), type=type(f.default), default=f.default)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    model, summary = pretrain(cfg)
    if osp.dirname(args.out):
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    save_weights(model, args.out, metadata=dict(model_name=cfg.model_name, summary=json.dumps(summary)))
    with open(osp.splitext(args.out)[0] + '.json', 'w') as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
