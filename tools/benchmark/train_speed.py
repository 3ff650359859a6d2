"""Images/s and peak memory of one NumCLIP training step at full size (CLIP ViT-B/16), on the device present.

The model is a paper config's (default ``configs/numclip_morph.py``: ViT-B/16 image and text towers, adapter,
learnable concept tokens, regressor) with random weights (speed does not depend on their values). One step is
MMEngine's ``model.train_step``: data preprocessor, forward (under autocast with ``--amp``), the three losses,
backward and the RAdam update. Batches are synthetic uint8 images of the model's input size (224x224 for
ViT-B/16), so data loading is not measured.

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU (tensors only), the process's peak resident set size
(``ru_maxrss``: model, optimizer state, activations and the Python process) on CPU.

    python tools/benchmark/train_speed.py --batch-size 32 --iters 20 --amp        # GPU, as the paper trains
    python tools/benchmark/train_speed.py --batch-size 4 --iters 3                 # CPU
Prints the figures and writes them to ``--out`` (default work_dirs/benchmarks/train_speed.json).
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import resource
import sys
import time

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)
from numclip_mm.engine import amp_available  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/numclip_morph.py',
                        help='a paper config (its model and optimizer)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--iters', type=int, default=10, help='timed training steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--amp', action='store_true', help='AmpOptimWrapper (fp16 autocast), as the paper; GPU only')
    parser.add_argument('--device', default=None, help="default: 'cuda' when available, else 'cpu'")
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads on CPU')
    parser.add_argument('--out', default='work_dirs/benchmarks/train_speed.json')
    return parser.parse_args()


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'CPU {model}, {torch.get_num_threads()} threads'


def synthetic_batch(batch_size: int, num_bins: int, image_size, seed: int = 0):
    """Packed-input-like uint8 images of the model's input size, with labels and values spread over the bins."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, *image_size), dtype=torch.uint8, generator=gen)
    samples = []
    for i in range(batch_size):
        sample = DataSample().set_gt_label(i % num_bins)
        sample.set_field(torch.tensor([float(i % num_bins)]), 'gt_value')
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.amp and not amp_available():
        sys.exit('--amp needs a CUDA device (MMEngine\'s AmpOptimWrapper); drop --amp to measure fp32 here')
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    cfg.model.clip.pretrained = None  # random weights: the speed does not depend on their values
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device).train()
    wrapper_cfg = cfg.optim_wrapper.copy()
    if args.amp:
        wrapper_cfg.update(type='AmpOptimWrapper', loss_scale=wrapper_cfg.get('loss_scale', 'dynamic'))
    else:
        wrapper_cfg.type = 'OptimWrapper'
        wrapper_cfg.pop('loss_scale', None)
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    image_size = tuple(model.backbone.visual.image_size)
    batch = synthetic_batch(args.batch_size, model.head.task.num_bins, image_size)
    load_before = os.getloadavg()[0]

    def step():
        losses = model.train_step(batch, optim_wrapper)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return losses

    for i in range(args.warmup):
        start = time.perf_counter()
        step()
        print(f'warm-up step {i + 1}/{args.warmup}: {time.perf_counter() - start:.2f} s', flush=True)
    times = []
    for i in range(args.iters):
        start = time.perf_counter()
        losses = step()
        times.append(time.perf_counter() - start)
        loss = float(torch.as_tensor(losses['loss']).detach())
        print(f'step {i + 1}/{args.iters}: {times[-1]:.2f} s, loss {loss:.3f}', flush=True)
    total = sum(times)
    if device.type == 'cuda':
        peak_mib, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, 'cuda_max_memory_allocated'
    else:
        peak_mib, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'peak_rss'
    result = dict(
        benchmark='train_speed', config=args.config, model=cfg.model.clip.model_name, device=device_name(device),
        amp=args.amp, batch_size=args.batch_size, image_size=list(image_size), timed_iters=args.iters,
        warmup_iters=args.warmup,
        images_per_s=args.batch_size * args.iters / total, s_per_iter=total / args.iters,
        s_per_iter_min=min(times), s_per_iter_max=max(times), peak_memory_mib=peak_mib, peak_memory_kind=peak_kind,
        torch=torch.__version__, date=datetime.date.today().isoformat(),
        load_average_1min=[load_before, os.getloadavg()[0]])  # other processes sharing the CPUs slow it down
    print(f"{result['model']} training step on {result['device']} (batch {args.batch_size}, "
          f"{'AMP fp16' if args.amp else 'fp32'}): {result['images_per_s']:.2f} images/s, "
          f"{result['s_per_iter']:.2f} s/iter, peak memory {peak_mib:.0f} MiB ({peak_kind})")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
