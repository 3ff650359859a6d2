"""tools/check_dataset.py: lists a config's missing/unreadable images (and annotation errors) before training."""
import importlib.util
import io
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location('check_dataset', ROOT / 'tools' / 'check_dataset.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', (8, 8), (10, 20, 30)).save(buf, format='PNG')
    return buf.getvalue()


def _config(tmp_path: Path, val_ann: str) -> str:
    (tmp_path / 'ok.png').write_bytes(_png())
    (tmp_path / 'ok2.png').write_bytes(_png())
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    (tmp_path / 'train.txt').write_text('ok.png 1\nmissing.png 2\nbroken.png 3\nok2.png 4\n')
    (tmp_path / 'val.txt').write_text(val_ann)
    pipeline = [dict(type='LoadOrdinalImage'), dict(type='PackInputs', algorithm_keys=['gt_value'])]
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(
        "default_scope = 'mmpretrain'\n"
        f"train_dataloader = dict(dataset=dict(type='OrdinalDataset', task='count', data_root={str(tmp_path)!r}, "
        f"ann_file='train.txt', pipeline={pipeline!r}))\n"
        f"val_dataloader = dict(dataset=dict(type='OrdinalDataset', task='count', data_root={str(tmp_path)!r}, "
        f"ann_file='val.txt', pipeline={pipeline!r}))\n")
    return str(cfg)


def test_lists_bad_images_and_exit_status(tmp_path, capsys):
    cfg = _config(tmp_path, 'ok.png 5\n')
    status = _tool().main([cfg, '--json', str(tmp_path / 'out.json')])
    out = capsys.readouterr().out
    assert status == 1
    assert 'train: sample 1: image file not found' in out and 'missing.png' in out
    assert 'broken.png): cannot decode' in out
    assert 'train: 2 of 4 images missing or unreadable' in out and 'val: 0 of 1 images' in out
    findings = json.loads((tmp_path / 'out.json').read_text())
    assert [f['split'] for f in findings] == ['train', 'val']
    assert [u['index'] for u in findings[0]['unreadable']] == [1, 2] and findings[1]['unreadable'] == []


def test_all_readable_is_status_0_and_annotation_errors_status_2(tmp_path, capsys):
    cfg = _config(tmp_path, 'ok.png 5\n')
    assert _tool().main([cfg, '--split', 'val']) == 0
    cfg = _config(tmp_path, 'ok.png 5\nok.png many\n')
    assert _tool().main([cfg, '--split', 'val']) == 2
    assert "val.txt: line 2: cannot parse value 'many'" in capsys.readouterr().err
