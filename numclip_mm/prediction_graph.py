"""A trained model's prediction as one TorchScript graph, so that processes that only predict load it with torch alone.

:class:`PredictionGraph` is what :class:`numclip_mm.inference.Predictor` runs: preprocessed uint8 images -> bin
probabilities, the head's numbers, the numbers clamped to the task's range and the L2-normalised image embeddings
(``v`` of docs/method.md §4-§5). The text prototypes ``t_k`` are constant at inference, so the trace holds them as
tensors, not the text tower that made them.

:func:`trace_graph` records it once (the scorer's driver does, from the checkpoint it checked) into an archive whose
metadata carries what a predictor needs besides the graph (task, input size, test pipeline); :func:`load_graph`
loads it with every tensor on the target device. An inference process then imports torch, not mmpretrain, open_clip
or (for a pipeline of the usual test steps) the config's modules, and builds no model: ~3 s less per scorer actor on
a 2-core machine (docs/batch_scoring.md). The archive is made and read on one machine (the scorer's job, and its
local cache of traces keyed by checkpoint, config and code: numclip_mm.batch.graph_cache): it is not a distribution
format. Loading it unpickles no Python objects: TorchScript's loader reads tensors and TorchScript code only.
"""
import contextlib
import dataclasses
import io
import json
import warnings
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

GRAPH_FORMAT = 'numclip-prediction-graph/1'
_METADATA = 'numclip.json'


class GraphTraceError(RuntimeError):
    """The model cannot be traced faithfully (its prediction would differ from the model's, or depend on the
    device it was traced on): use the model itself."""


class PredictionGraph(torch.nn.Module):
    """uint8 images (N, 3, H, W) (or a list of (3, H, W)) -> probabilities (N, K), head numbers (N,), numbers
    clamped to the task's range (N,), L2-normalised image embeddings (N, D): one definition for the model run
    eagerly and for its trace."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        model = self.model
        data = model.data_preprocessor(dict(inputs=inputs), False)
        feats = model.extract_feat(data['inputs'])
        probs, raw = model.head.predict_arrays(feats)
        values = model.head.to_task_range(raw.float())
        embeddings = torch.nn.functional.normalize(feats[-1].float(), dim=-1)
        return probs, raw, values, embeddings


def trace_graph(model: torch.nn.Module, input_size: Sequence[int], metadata: Dict[str, Any],
                atol: float = 1e-4) -> bytes:
    """The archive (bytes) of :func:`trace_module`'s graph of ``model``, with ``metadata`` (JSON-serialisable;
    dataclasses allowed) stored beside it."""
    meta = dict(format=GRAPH_FORMAT, input_size=list(input_size or ()), **_plain(metadata))
    traced = trace_module(model, input_size, atol)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={_METADATA: json.dumps(meta)})
    return buffer.getvalue()


def trace_module(model: torch.nn.Module, input_size: Sequence[int], atol: float = 1e-4) -> torch.jit.ScriptModule:
    """``model``'s :class:`PredictionGraph` traced on CPU in fp32 and frozen.

    The trace is checked before it is returned: on a batch of another size it must give the model's own outputs
    (within ``atol``), and it must hold no device constant (a trace made on CPU must run on a GPU). Raises
    :class:`GraphTraceError` otherwise, naming what differs.
    """
    if input_size is None:
        raise GraphTraceError('the model does not say its input size: nothing to trace with')
    model = model.eval()
    if any(t.device.type != 'cpu' for t in (*model.parameters(), *model.buffers())):
        raise GraphTraceError('trace the model on the CPU (its archive is loaded onto any device)')
    graph = PredictionGraph(model).eval()
    generator = torch.Generator().manual_seed(0)
    example, check = (torch.randint(0, 256, (n, 3, *input_size), dtype=torch.uint8, generator=generator)
                      for n in (1, 2))
    with torch.no_grad():
        expected = graph(check)  # also warms what the model caches (the text prototypes): the trace holds them
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TracerWarnings and torch.jit's deprecation: the checks below decide
            try:
                with _inputs_already_placed(model):
                    traced = torch.jit.trace(graph, example, check_trace=False)
                # weights become constants and what the prediction does not use (the text tower) is dropped:
                # ViT-B/16's archive 572 -> 329 MB, its load 3.0 -> 0.7 s
                traced = torch.jit.freeze(traced)
            except Exception as err:  # noqa: BLE001  (any model code may fail to trace)
                raise GraphTraceError(f'tracing failed: {type(err).__name__}: {err}') from err
        with torch.jit.optimized_execution(False):  # one run: no profiling passes
            got = traced(check)
    names = ('probabilities', 'numbers', 'clamped numbers', 'embeddings')
    for name, a, b in zip(names, expected, got):
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4):
            raise GraphTraceError(f'the trace\'s {name} differ from the model\'s on a batch of another size '
                                  f'(shape {tuple(b.shape)} vs {tuple(a.shape)}): the model has batch- or '
                                  'data-dependent code')
    devices = sorted({str(n.output().toIValue()) for n in traced.graph.nodes()
                      if n.kind() == 'prim::Constant' and n.output().type().kind() == 'DeviceObjType'})
    if devices:
        raise GraphTraceError(f'the trace holds device constants {devices} (tensors made with device=...): it '
                              'would not run on another device')
    return traced


def load_graph(archive: bytes, device='cpu') -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """(graph, metadata) of an archive of :func:`trace_graph`, every tensor (weights and the constants the trace
    holds) on ``device``. Raises ValueError for bytes that are not such an archive."""
    files = {_METADATA: ''}
    try:
        graph = torch.jit.load(io.BytesIO(archive), map_location=torch.device(device), _extra_files=files)
        meta = json.loads(files[_METADATA] or '{}')
    except (RuntimeError, ValueError) as err:
        raise ValueError(f'not a prediction graph archive: {err}') from None
    if meta.get('format') != GRAPH_FORMAT:
        raise ValueError(f'not a prediction graph archive of this version ({GRAPH_FORMAT}): its format is '
                         f'{meta.get("format")!r}')
    return graph.eval(), meta


def graph_metadata(archive: bytes) -> Dict[str, Any]:
    """The metadata of an archive of :func:`trace_graph` (task, input size, pipeline, imports), read from the archive
    (a zip) without loading the graph. Raises ValueError for bytes that are not such an archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            name = next(n for n in zf.namelist() if n.endswith(f'/extra/{_METADATA}'))
            meta = json.loads(zf.read(name))
    except (zipfile.BadZipFile, StopIteration, ValueError) as err:
        raise ValueError(f'not a prediction graph archive: {type(err).__name__}: {err}') from None
    if meta.get('format') != GRAPH_FORMAT:
        raise ValueError(f'not a prediction graph archive of this version ({GRAPH_FORMAT}): its format is '
                         f'{meta.get("format")!r}')
    return meta


@contextlib.contextmanager
def _inputs_already_placed(model: torch.nn.Module):
    """MMEngine's data preprocessor moves its inputs to the model's device (``cast_data``): traced, that move
    would become a constant 'cpu'. The graph's caller places the inputs (:class:`Predictor` does), so the trace
    leaves that step out."""
    preprocessor = getattr(model, 'data_preprocessor', None)
    if preprocessor is None or not hasattr(preprocessor, 'cast_data'):
        yield
        return
    preprocessor.cast_data = lambda data: data
    try:
        yield
    finally:
        del preprocessor.cast_data


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts and tuples as lists (JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def tuples(value: Optional[Any]) -> Any:
    """JSON lists back to tuples, recursively (a pipeline step's ``scale=(256, 256)``)."""
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(tuples(v) for v in value)
    return value
