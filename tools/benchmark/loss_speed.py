"""Speed of the vectorised FCRC losses against a per-sample Python-loop reference of the same formulas.

The reference below is written straight from the formulas of docs/method.md §8.1-§8.3, one sample
(image->text) or one class (text->image) at a time. Before timing, both implementations are checked to agree in
float64 on every configuration (loss value and gradient w.r.t. the logits, to ``--tol``). Timings are the median of
several forward+backward passes.

    python tools/benchmark/loss_speed.py                      # table + work_dirs/benchmarks/loss_speed.json
    python tools/benchmark/loss_speed.py --threads 2 --batch-sizes 32 256 --num-classes 5
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
import statistics
import time

import torch  # noqa: E402

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)
from numclip_mm.models.losses import FCRCImageTextLoss, FCRCTextImageLoss  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# loop references (docs/method.md §8.1-§8.3)
# ----------------------------------------------------------------------------------------------------------------
def ref_weight(c: int, j: int, k: int) -> float:
    """Doc 3.1: w(c, j) = (K-1)|c-j| / sum_k |c-k| for j != c, and 1 for j == c."""
    if c == j:
        return 1.0
    return (k - 1) * abs(c - j) / sum(abs(c - m) for m in range(k))


def loop_i2t(logits: torch.Tensor, labels: torch.Tensor, form: str = 'code') -> torch.Tensor:
    """Doc 3.2, one image at a time. Code form: CE over w(c_b, .) * l_b. Paper form:
    -log e^{l_c} / (e^{l_c} + sum_{j != c} w(c, j) e^{l_j})."""
    b_count, k = logits.shape
    total = logits.new_zeros(())
    for b in range(b_count):
        c = int(labels[b])
        w = logits.new_tensor([ref_weight(c, j, k) for j in range(k)])
        row = logits[b]
        if form == 'code':
            z = w * row
            total = total - (z[c] - torch.logsumexp(z, dim=0))
        else:
            negatives = torch.cat([row[:c], row[c + 1:]])
            w_neg = torch.cat([w[:c], w[c + 1:]])
            den = torch.logsumexp(torch.cat([row[c:c + 1], negatives + w_neg.log()]), dim=0)
            total = total - (row[c] - den)
    return total / b_count


def loop_t2i(logits: torch.Tensor, labels: torch.Tensor, sharpness: float = 10.0) -> torch.Tensor:
    """Doc 3.3, one class at a time, per-image weights and targets from Python loops."""
    b_count, k = logits.shape
    labs = [int(c) for c in labels]
    kls = []
    for j in range(k):
        if j not in labs:
            continue  # absent classes contribute 0
        raw = [math.exp(sharpness * (1.0 if c == j else 0.0)) for c in labs]
        q = logits.new_tensor([v / sum(raw) for v in raw])
        denom = sum(abs(j - c) for c in labs)
        u = logits.new_tensor([1.0 if (c == j or denom == 0) else (k - 1) * abs(j - c) / denom for c in labs])
        log_p = torch.log_softmax(u * logits[:, j], dim=0)
        kls.append((q * (q.log() - log_p)).sum())
    return torch.stack(kls).mean()


def make_losses(k: int):
    """name -> (vectorised module, loop reference)."""
    return {
        'i2t_code': (FCRCImageTextLoss(k, form='code'), lambda x, y: loop_i2t(x, y, 'code')),
        'i2t_paper': (FCRCImageTextLoss(k, form='paper'), lambda x, y: loop_i2t(x, y, 'paper')),
        't2i': (FCRCTextImageLoss(k), loop_t2i),
    }


# ----------------------------------------------------------------------------------------------------------------
# agreement and timing
# ----------------------------------------------------------------------------------------------------------------
def make_inputs(batch: int, k: int, seed: int, dtype, device):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, k, generator=g, dtype=torch.float64) * 3.0).to(device=device, dtype=dtype)
    labels = torch.randint(0, k, (batch,), generator=g).to(device)
    return logits, labels


def value_and_grad(fn, logits, labels):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, labels)
    loss.backward()
    return loss.detach(), x.grad.detach()


def check_agreement(fn_vec, fn_loop, logits, labels):
    """Max abs differences of loss and gradient between the two implementations (inputs in float64)."""
    lv, gv = value_and_grad(fn_vec, logits.double(), labels)
    ll, gl = value_and_grad(fn_loop, logits.double(), labels)
    return float((lv - ll).abs()), float((gv - gl).abs().max())


def time_fwd_bwd(fn, logits, labels, repeats: int, warmup: int, device) -> float:
    """Median seconds of one forward+backward."""
    times = []
    for i in range(warmup + repeats):
        x = logits.detach().clone().requires_grad_(True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(x, labels).backward()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop_repeats(batch: int, k: int, base: int) -> int:
    """Fewer repeats for the slow loop reference at large B*K (at least 3, so the median means something)."""
    work = batch * max(k, 5)
    return max(3, min(base, int(base * 32 * 5 / work)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[32, 256, 1024])
    parser.add_argument('--num-classes', type=int, nargs='+', default=[5, 100])
    parser.add_argument('--losses', nargs='+', default=['i2t_code', 'i2t_paper', 't2i'],
                        choices=['i2t_code', 'i2t_paper', 't2i'])
    parser.add_argument('--repeats', type=int, default=30, help='timed repeats of the vectorised losses')
    parser.add_argument('--loop-repeats', type=int, default=10,
                        help='timed repeats of the loop reference at B=32, K=5 (scaled down with B*K, min 3)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1, help='torch.set_num_threads (CPU)')
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32', help='dtype for timing')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--tol', type=float, default=1e-5, help='agreement tolerance (float64, abs)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='work_dirs/benchmarks/loss_speed.json', help='JSON results path')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    # 1) agreement, every configuration, before any timing
    agreement = {}
    worst = 0.0
    for k in args.num_classes:
        losses = make_losses(k)
        for batch in args.batch_sizes:
            logits, labels = make_inputs(batch, k, args.seed, torch.float64, device)
            for name in args.losses:
                vec, ref = losses[name]
                d_loss, d_grad = check_agreement(vec.to(device), ref, logits, labels)
                agreement[(name, batch, k)] = (d_loss, d_grad)
                worst = max(worst, d_loss, d_grad)
                if d_loss > args.tol or d_grad > args.tol:
                    raise SystemExit(f'{name} B={batch} K={k}: vectorised and loop reference disagree '
                                     f'(|dloss|={d_loss:.3g}, max|dgrad|={d_grad:.3g} > {args.tol})')
    print(f'agreement (float64): all {len(agreement)} configurations within {args.tol:g} '
          f'(worst {worst:.2e})\n')

    # 2) timing
    rows = []
    header = (f'{"loss":<10} {"B":>5} {"K":>4} {"vectorised ms":>14} {"loop ms":>10} {"speed-up":>9} '
              f'{"reps (vec/loop)":>16} {"|dloss|":>9} {"max|dgrad|":>11}')
    print(f'FCRC forward+backward, {args.dtype} on {device}, {args.threads} thread(s), median times')
    print(header)
    print('-' * len(header))
    for k in args.num_classes:
        losses = make_losses(k)
        for batch in args.batch_sizes:
            logits, labels = make_inputs(batch, k, args.seed, dtype, device)
            for name in args.losses:
                vec, ref = losses[name]
                vec = vec.to(device)
                n_loop = loop_repeats(batch, k, args.loop_repeats)
                t_vec = time_fwd_bwd(vec, logits, labels, args.repeats, args.warmup, device)
                t_loop = time_fwd_bwd(ref, logits, labels, n_loop, 1, device)
                d_loss, d_grad = agreement[(name, batch, k)]
                row = dict(loss=name, batch_size=batch, num_classes=k, vectorised_ms=t_vec * 1e3,
                           loop_ms=t_loop * 1e3, speedup=t_loop / t_vec, repeats_vectorised=args.repeats,
                           repeats_loop=n_loop, max_abs_diff_loss=d_loss, max_abs_diff_grad=d_grad)
                rows.append(row)
                print(f'{name:<10} {batch:>5} {k:>4} {row["vectorised_ms"]:>14.3f} {row["loop_ms"]:>10.2f} '
                      f'{row["speedup"]:>8.1f}x {f"{args.repeats}/{n_loop}":>16} {d_loss:>9.1e} {d_grad:>11.1e}',
                      flush=True)

    result = dict(
        benchmark='fcrc_loss_speed', dtype=args.dtype, device=str(device), threads=args.threads,
        agreement_dtype='float64', tolerance=args.tol, seed=args.seed, torch=torch.__version__,
        python=platform.python_version(), machine=platform.machine(), processor=platform.processor(),
        results=rows)
    out_dir = osp.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwrote {args.out}')
    return result


if __name__ == '__main__':
    main()
