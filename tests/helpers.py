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


def dying_actor(exit_at_batch: int, marker=None):
    """A scorer actor class (:class:`numclip_mm.batch.actor.InferenceActor` subclass) whose process exits, as a crash
    would, when it reaches its ``exit_at_batch``-th batch: with a ``marker`` path only while that file does not exist
    yet (it is created first: one death), without one at that batch of every incarnation. Defined in a function so
    that Ray pickles it by value (the workers need not import this test module)."""
    import os

    from numclip_mm.batch.actor import InferenceActor

    class DyingActor(InferenceActor):
        batches = 0

        def predict_rows(self, *args, **kwargs):
            self.batches += 1
            if self.batches == exit_at_batch and (marker is None or not os.path.exists(marker)):
                if marker is not None:
                    open(marker, 'w').close()
                os._exit(1)
            return super().predict_rows(*args, **kwargs)
    return DyingActor
