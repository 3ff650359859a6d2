"""Small builders shared by several test modules."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / 'tests' / 'configs' / 'numclip_tiny.py'


def write_tiny_config(path, task='count', model_name='numclip-tiny') -> str:
    """tests/configs/numclip_tiny.py with another task or CLIP model, written to ``path``."""
    path = Path(path)
    path.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\n"
                    f"model = dict(clip=dict(model_name={model_name!r}), head=dict(task={task!r}))\n")
    return str(path)
