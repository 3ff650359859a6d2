"""Full-size rehearsal of the paper path: the real open_clip ViT-B-16 with fabricated (random) weights saved in
OpenAI's release format (a TorchScript archive of fp16 weights), and every paper config building from it, training
two iterations and testing on a handful of fabricated images laid out exactly as that data set's public lists.

CPU only; each config gets batch size 2, two training images per iteration, two test images, no workers. The
archive (~300 MB) is built once per session in a temporary folder and removed afterwards.
"""
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import open_clip
import pytest
import torch
from helpers import run_tool_in_process
from mmengine.config import Config
from open_clip.transformer import QuickGELU

from numclip_mm.engine import StrictLoadRunner, fall_back_from_amp
from numclip_mm.models.clip_loader import build_open_clip, checkpoint_format
from numclip_mm.prediction_graph import PredictionGraph, trace_module
from numclip_mm.utils import CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN = {  # two iterations of batch 2, then a test on two images; nothing kept but the metrics
    'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1, 'default_hooks.logger.interval': 1,
    **{f'{split}_dataloader.{key}': value for split in ('train', 'val', 'test')
       for key, value in (('batch_size', 2), ('num_workers', 0), ('persistent_workers', False))},
}


@pytest.fixture(scope='session')
def openai_archive(tmp_path_factory):
    """``<cache>/ViT-B-16.pt``: random ViT-B-16 weights as OpenAI ships them (traced TorchScript, fp16)."""
    cache = tmp_path_factory.mktemp('clip_cache')
    path = cache / 'ViT-B-16.pt'
    start = time.perf_counter()
    torch.manual_seed(2024)
    model = open_clip.create_model('ViT-B-16', pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
                                 check_trace=False)
    traced.half().save(str(path))
    reference = {k: model.state_dict()[k].half().float() for k in
                 ('visual.conv1.weight', 'token_embedding.weight', 'text_projection')}
    del model, traced
    print(f'\nOpenAI-format ViT-B-16 archive: {path.stat().st_size / 2**20:.0f} MiB in '
          f'{time.perf_counter() - start:.1f} s')
    yield dict(path=path, cache=cache, reference=reference)
    shutil.rmtree(cache, ignore_errors=True)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (48 + seed % 5, 64, 3), dtype=np.uint8))


def write_list(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{line}\n' for line in lines))


def fabricate_morph(root: Path) -> None:
    """OrdinalCLIP's MORPH II lists: ``ET_proto_{train,val}.txt`` with ``path age``; images under ``images/``."""
    for split, ages in (('train', (16, 27, 45, 70)), ('val', (19, 61))):
        names = [f'Album2/{split}{i:03d}_{i}M{age}.JPG' for i, age in enumerate(ages)]
        write_list(root / f'ET_proto_{split}.txt', [f'{n} {a}' for n, a in zip(names, ages)])
        for i, name in enumerate(names):
            write_image(root / 'images' / name, i)


def fabricate_hci(root: Path) -> None:
    """HCI fold lists ``labels/fold_0/{train,val,test}.txt`` with ``path decade`` (0..4); images by decade."""
    decades = ('1930s', '1940s', '1950s', '1960s', '1970s')
    for split, labels in (('train', (0, 1, 3, 4)), ('val', (2, 4)), ('test', (0, 3))):
        names = [f'{decades[c]}/{split}_{i}.jpg' for i, c in enumerate(labels)]
        write_list(root / 'labels/fold_0' / f'{split}.txt', [f'{n} {c}' for n, c in zip(names, labels)])
        for i, name in enumerate(names):
            write_image(root / name, i)


def fabricate_aesthetics(root: Path) -> None:
    """``{category}_{train,test}.txt`` per category with ``path grade``; 'all' concatenates the four categories."""
    for k, category in enumerate(('animals', 'nature', 'people', 'urban')):
        for split in ('train', 'test'):
            grades = (k,) if split == 'train' else (4 - k,) if k < 2 else ()  # 4 train, 2 test images
            names = [f'{category}/{split}_{i}.jpg' for i in range(len(grades))]
            write_list(root / f'{category}_{split}.txt', [f'{n} {g}' for n, g in zip(names, grades)])
            for i, name in enumerate(names):
                write_image(root / name, k + i)


ADIENCE_HEADER = ('user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\t'
                  'fiducial_score')


def fabricate_adience(root: Path) -> None:
    """Adience's ``fold_{k}_data.txt`` (tab-separated, header row) and ``faces/<user>/coarse_tilt_aligned_face.*``."""
    ages = {0: ('(25, 32)', '(0, 2)'), 1: ('(60, 100)',), 2: ('(8, 12)',), 3: ('(38, 43)',), 4: ('(15, 20)',)}
    for fold, fold_ages in ages.items():
        rows = [ADIENCE_HEADER]
        for i, age in enumerate(fold_ages):
            user, image, face = f'user{fold}@N0{i}', f'{1000 + i}_{fold}.jpg', 10 * fold + i
            rows.append(f'{user}\t{image}\t{face}\t{age}\tf\t0\t0\t100\t100\t0\t0\t50')
            write_image(root / 'faces' / user / f'coarse_tilt_aligned_face.{face}.{image}', fold + i)
        write_list(root / f'fold_{fold}_data.txt', rows)


FABRICATE = dict(morph=fabricate_morph, hci=fabricate_hci, aesthetics=fabricate_aesthetics,
                 adience=fabricate_adience)


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


@pytest.mark.parametrize('dataset', ['hci', 'aesthetics', 'adience'])
def test_paper_config_trains_and_tests_in_process(openai_archive, tmp_path, dataset):
    """The config as docs run it on CPU (optim_wrapper.type=OptimWrapper), its data root replaced."""
    start = time.perf_counter()
    FABRICATE[dataset](tmp_path / 'data')
    cfg = Config.fromfile(str(ROOT / f'configs/numclip_{dataset}.py'))
    options = {**{k: v for k, v in SMALL_RUN.items() if not k.startswith('val_')},
               'model.clip.pretrained': str(openai_archive['path']), 'optim_wrapper.type': 'OptimWrapper',
               'work_dir': str(tmp_path / 'work'), 'default_hooks.checkpoint': None,
               'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None}
    cfg.merge_from_dict(options)
    for split in ('train', 'test'):  # validation runs in the tools test below; here it would only add time
        cfg[f'{split}_dataloader'].dataset.data_root = str(tmp_path / 'data')
    fall_back_from_amp(cfg)  # what tools/train.py does: drops AMP's loss_scale that OptimWrapper rejects
    runner = StrictLoadRunner.from_cfg(cfg)
    built = time.perf_counter()
    model = runner.model
    assert uses_quick_gelu(model)  # OpenAI weights: QuickGELU, chosen from the archive format
    ref = openai_archive['reference']
    token_embedding = model.head.text_encoder.token_embedding.weight
    assert not torch.equal(token_embedding, ref['token_embedding.weight'])  # built, not loaded: init_weights loads
    runner.train()
    assert runner.iter == 2
    assert torch.equal(token_embedding, ref['token_embedding.weight'])  # frozen: exactly the archive's
    assert token_embedding.dtype == torch.float32
    conv1 = model.backbone.visual.conv1.weight.detach()
    assert 0 < (conv1 - ref['visual.conv1.weight']).abs().max() < 1e-3  # fine-tuned a little from the archive
    trained = time.perf_counter()
    metrics = runner.test()
    assert {'mae', 'accuracy'} <= {k.split('/')[-1] for k in metrics}
    assert all(np.isfinite(v) for v in metrics.values())
    if dataset == 'hci':  # the scorer's driver traces a trained full-size model: the graph predicts what it predicts
        traced_at = time.perf_counter()
        graph, eager = trace_module(model, (224, 224)), PredictionGraph(model)
        images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            for a, b in zip(eager(images), graph(images)):
                torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        print(f'\nViT-B-16 NumCLIP traced and checked in {time.perf_counter() - traced_at:.1f} s')
    print(f'\n{dataset}: built in {built - start:.1f} s, trained 2 iterations in '
          f'{trained - built:.1f} s, tested in {time.perf_counter() - trained:.1f} s')


def run_tool(*args, env):
    """``python tools/...`` run inside this process (:func:`helpers.run_tool_in_process`) with ``env`` added to the
    environment for the run: the loader reads ``NUMCLIP_CLIP_CACHE`` when it looks for the file, not at start."""
    proc = run_tool_in_process(*args, env=env)
    assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc


def test_morph_through_the_tools_with_the_readme_cache(openai_archive, tmp_path):
    """tools/train.py then tools/test.py on configs/numclip_morph.py exactly as docs/reproducing_the_paper.md: the
    weights come from ``$NUMCLIP_CLIP_CACHE/ViT-B-16.pt`` (the config's ``pretrained='openai'``), the AMP config falls
    back to OptimWrapper by itself on this CPU-only machine."""
    start = time.perf_counter()
    fabricate_morph(tmp_path / 'data')
    env = {'NUMCLIP_CLIP_CACHE': str(openai_archive['cache']), 'HF_HUB_OFFLINE': '1'}
    options = [f'{k}={v}' for k, v in SMALL_RUN.items()]
    options += [f'{split}_dataloader.dataset.data_root={tmp_path / "data"}' for split in ('train', 'val')]
    options += ['default_hooks.checkpoint.save_best=None', 'default_hooks.checkpoint.save_optimizer=False']
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', 'configs/numclip_morph.py', '--work-dir', work, '--cfg-options', *options,
                    env=env)
    log = proc.stdout + proc.stderr
    assert 'instead of AmpOptimWrapper' in log
    assert 'Epoch(train) [1][2/2]' in log
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    out = tmp_path / 'pred.csv'
    # a trained checkpoint needs no CLIP file: tools/test.py runs with an empty CLIP cache
    empty = tmp_path / 'empty_cache'
    empty.mkdir()
    run_tool('tools/test.py', 'configs/numclip_morph.py', ckpt, '--work-dir', tmp_path / 'test', '--out', out,
             '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path / "data"}', 'test_dataloader.batch_size=2',
             'test_dataloader.num_workers=0', env=dict(env, NUMCLIP_CLIP_CACHE=str(empty)))
    import pandas as pd
    table = pd.read_csv(out)
    assert len(table) == 2 and table['gt_value'].tolist() == [19.0, 61.0]
    assert table['pred_value'].notna().all()
    ckpt.unlink()
    print(f'\nmorph through tools/train.py + tools/test.py: {time.perf_counter() - start:.1f} s')


def test_archive_is_detected_and_another_architecture_is_refused(openai_archive):
    path = str(openai_archive['path'])
    assert checkpoint_format(path) == 'torchscript'
    with pytest.raises(CheckpointMismatchError) as err:
        build_open_clip('ViT-B-32', pretrained=path)
    msg = str(err.value)
    assert path in msg and 'ViT-B-32' in msg and 'ViT-B-16' in msg and 'patch 16' in msg and 'patch 32' in msg
