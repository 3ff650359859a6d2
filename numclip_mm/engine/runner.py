"""MMEngine's Runner with strict, weights-only checkpoint loading and a device-chosen distributed backend.

MMEngine's ``Runner.load_checkpoint`` (used by ``load_from``, ``--resume`` and tools/test.py) loads with
``strict=False``: a checkpoint of another config loads partly, and only a warning deep in the log tells. Here a
checkpoint that does not fit the model raises :class:`~numclip_mm.utils.CheckpointMismatchError` naming the file and
the first missing/unexpected keys, unless the config opts in with ``load_strict = False`` (tools/train.py
``--partial-load``: fine-tuning from another task's checkpoint). Reading goes through MMEngine's
``CheckpointLoader``, whose local/http/s3 schemes numclip_mm replaces with a weights-only loader
(:func:`~numclip_mm.utils.register_weights_only_loader`).

A config's top-level ``task`` becomes its head's and datasets' task here (:func:`numclip_mm.tasks.apply_config_task`).
The configs' ``env_cfg.dist_cfg.backend='auto'`` is resolved here (NCCL with CUDA, gloo without) before MMEngine
starts the process group.
"""
import copy

from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from ..tasks import apply_config_task
from ..utils.checkpoint import check_state_dict, first_items, model_state_dict
from .device_defaults import choose_dist_backend


@RUNNERS.register_module()
class StrictLoadRunner(Runner):
    """``Runner`` whose checkpoint loading is strict unless ``cfg.load_strict`` is False."""

    @classmethod
    def from_cfg(cls, cfg) -> 'StrictLoadRunner':
        """MMEngine's ``from_cfg`` after the config's top-level ``task`` is given to its head and datasets
        (:func:`numclip_mm.tasks.apply_config_task`)."""
        return super().from_cfg(apply_config_task(copy.deepcopy(cfg)))

    @property
    def load_strict(self) -> bool:
        return bool(self.cfg.get('load_strict', True))

    def setup_env(self, env_cfg: dict) -> None:
        env_cfg = copy.deepcopy(dict(env_cfg))
        dist_cfg = dict(env_cfg.get('dist_cfg') or {})
        dist_cfg['backend'] = choose_dist_backend(dist_cfg.get('backend'))
        env_cfg['dist_cfg'] = dist_cfg
        super().setup_env(env_cfg)

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006  (MMEngine's signature)
        """Load ``filename`` into the model; ``strict`` is ignored in favour of ``cfg.load_strict``."""
        strict = self.load_strict
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):  # DDP, --tta: as MMEngine unwraps them
            model = model.module
        state = model_state_dict(checkpoint, revise_keys)
        if strict:
            check_state_dict(model, state, filename)
        else:
            expected = model.state_dict()
            missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            print_log(f'partial load of {filename} (load_strict=False): missing keys {first_items(missing)}, '
                      f'unexpected keys {first_items(unexpected)}', logger='current', level=30)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
