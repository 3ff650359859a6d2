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


class Payload:
    """Unpickling this object creates ``marker``: proof that pickled code ran (the refusal tests check it never
    does under weights-only loading)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))
