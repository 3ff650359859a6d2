"""MMEngine's Runner with strict, weights-only checkpoint loading and a device-chosen distributed backend.

MMEngine's ``Runner.load_checkpoint`` (used by ``load_from``, ``--resume`` and tools/test.py) loads with
``strict=False``: a checkpoint of another config loads partly, and only a warning deep in the log tells. Here a
checkpoint that does not fit the model raises :class:`~numclip_mm.utils.CheckpointMismatchError` naming the file and
the first missing/unexpected keys, unless the config opts in with ``load_strict = False`` (tools/train.py
``--partial-load``: fine-tuning from another task's checkpoint). Reading goes through MMEngine's
``CheckpointLoader``, whose local/http/s3 schemes numclip_mm replaces with a weights-only loader
(:func:`~numclip_mm.utils.register_weights_only_loader`).

Build is not load: the pretrained CLIP weights are applied by the model's ``init_weights``
(:meth:`numclip_mm.models.NumCLIP.init_weights`). MMEngine calls it before training, also when ``load_from`` or
``--resume`` then replaces every weight; here the CLIP file is not read in that case (a strict load follows), and
val/test without a checkpoint (zero-shot) apply the config's pretrained weights first.

A config's top-level ``task`` becomes its head's and datasets' task here (:func:`numclip_mm.tasks.apply_config_task`).
The configs' ``env_cfg.dist_cfg.backend='auto'`` is resolved here (NCCL with CUDA, gloo without) before MMEngine
starts the process group.
"""
import copy

from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model, find_latest_checkpoint

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

    def _unwrapped_model(self):
        model = self.model
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):  # DDP, --tta: as MMEngine unwraps them
            model = model.module
        return model

    def checkpoint_to_load(self):
        """The checkpoint :meth:`load_or_resume` will load (MMEngine's rules: ``--resume`` finds the latest one in
        the work dir), None when it loads nothing."""
        if self._has_loaded:
            return None
        if self._resume:
            return self._load_from or find_latest_checkpoint(self.work_dir)
        return self._load_from

    def _init_model_weights(self) -> None:
        """MMEngine's, without reading the CLIP file when a strict checkpoint load follows and replaces it."""
        if self.load_strict and self.checkpoint_to_load() is not None:
            from ..models.classifier import pretrained_weights_skipped
            with pretrained_weights_skipped(self._unwrapped_model()):
                super()._init_model_weights()
        else:
            super()._init_model_weights()

    def load_or_resume(self) -> None:
        """MMEngine's; without a checkpoint, the model's own init (pretrained CLIP) first when not done yet (val and
        test of zero-shot configs: Runner.train already ran it)."""
        model = self._unwrapped_model()
        if self.checkpoint_to_load() is None and hasattr(model, 'init_weights') and not getattr(model, 'is_init',
                                                                                                   False):
            self._init_model_weights()
        super().load_or_resume()

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006  (MMEngine's signature)
        """Load ``filename`` into the model; ``strict`` is ignored in favour of ``cfg.load_strict``."""
        strict = self.load_strict
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self._unwrapped_model()
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
