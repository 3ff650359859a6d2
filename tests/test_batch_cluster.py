"""How the scorer meets Ray: the default sizing from a cluster's resources (hand-checked cases and the no-deadlock
invariant), a real run with the defaults, an address where the cluster is gone (a head started then killed), and
SIGINT on a real `numclip-score` run while its actors start (exit code, one line, no partial output, no process
left; SIGTERM while scoring is test_batch_cli's).

Every command runs in its own session (start_new_session) and only that group is ever signalled or killed.
"""
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    RUN_MARK,
    free_port,
    kill_group,
    processes_marked,
    run_tool_in_process,
    scorer_env,
    wait_until_gone,
    write_tiny_config,
)
from PIL import Image

from numclip_mm.batch.cluster import (
    RayStarter,
    RayUnavailable,
    Sizing,
    cluster_resources,
    probe,
    resolve_address,
    size_pipeline,
)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TEST_TIMEOUT_S = 300
GIB = 2 ** 30


# --------------------------------------------------------------------------------------------------------------
# sizing (pure)

def _total_cpus(s: Sizing) -> float:
    return s.num_actors * s.cpus_per_actor + (0 if s.decode_in_actor else s.cpus_per_decode_task)


@pytest.mark.parametrize('resources, expected', [
    # CPU only: one 1-thread actor per CPU, decoding in the actors
    (dict(CPU=2, memory=20 * GIB), Sizing(2, 1.0, 0.0, 1, True, 1.0, 64)),
    (dict(CPU=16, memory=64 * GIB), Sizing(16, 1.0, 0.0, 1, True, 1.0, 64)),
    # memory for 5 replicas of 1 GiB (70 % of 8 GiB): 5 wider actors on 64 CPUs
    (dict(CPU=64, memory=8 * GIB, node_CPU=64), Sizing(5, 12.0, 0.0, 12, True, 1.0, 64)),
    # GPUs: one actor per GPU, decode tasks on the CPUs the actors leave
    (dict(CPU=8, GPU=2, memory=64 * GIB), Sizing(2, 1.0, 1.0, 1, False, 1.0, 256)),
    (dict(CPU=2, GPU=4, memory=64 * GIB), Sizing(4, 0.25, 1.0, 1, False, 1.0, 256)),
])
def test_default_sizing(resources, expected):
    got = size_pipeline(resources, actor_memory=GIB)
    assert got == expected
    assert _total_cpus(got) <= resources['CPU']


def test_small_jobs_get_fewer_wider_actors():
    """An actor takes whole row groups: with fewer row groups than CPUs the spare CPUs become torch threads of the
    actors that get work (no actor is started that would never get any); explicit options and GPUs are kept."""
    cpu = dict(CPU=8, memory=64 * GIB)
    assert size_pipeline(cpu, work_items=1) == Sizing(1, 8.0, 0.0, 8, True, 1.0, 64)
    assert size_pipeline(cpu, work_items=3) == Sizing(3, 2.0, 0.0, 2, True, 1.0, 64)
    assert size_pipeline(cpu, work_items=100) == size_pipeline(cpu)
    assert size_pipeline(cpu, work_items=0).num_actors == 1
    assert size_pipeline(cpu, work_items=1, num_actors=4).num_actors == 4
    assert size_pipeline(cpu, work_items=1, torch_threads=1) == Sizing(1, 1.0, 0.0, 1, True, 1.0, 64)
    assert size_pipeline(cpu, work_items=1, decode_in_actor=False) == size_pipeline(cpu, decode_in_actor=False)
    assert size_pipeline(dict(CPU=8, GPU=2), work_items=1).num_actors == 2
    assert _total_cpus(size_pipeline(dict(CPU=3, memory=64 * GIB), work_items=2)) <= 3


def test_explicit_options_are_kept():
    s = size_pipeline(dict(CPU=2, memory=20 * GIB), num_actors=4, torch_threads=2, batch_size=16)
    assert (s.num_actors, s.torch_threads, s.batch_size, s.cpus_per_actor) == (4, 2, 16, 0.5)
    s = size_pipeline(dict(CPU=8, GPU=2), num_gpus_per_actor=0)  # GPUs present, CPU inference asked
    assert (s.gpus_per_actor, s.num_actors, s.decode_in_actor) == (0.0, 8, True)
    s = size_pipeline(dict(CPU=8), num_gpus_per_actor=0.5, num_actors=3)
    assert (s.gpus_per_actor, s.num_actors, s.decode_in_actor) == (0.5, 3, False)


def test_sizing_never_holds_every_cpu_a_decode_task_needs():
    """The environment's pitfall (2 CPUs, two 1-CPU actors, reads starved): over many clusters the actors' CPUs
    plus one decode task's fit in the available CPUs, and the shares are never rounded up past them."""
    for cpus in (0.5, 1, 1.5, 2, 3, 7, 12, 64, 96):
        for gpus in (0, 1, 3, 8):
            for memory in (0, 2 * GIB, 500 * GIB):
                for decode_in_actor in (None, False):
                    s = size_pipeline(dict(CPU=cpus, GPU=gpus, memory=memory), decode_in_actor=decode_in_actor)
                    assert s.num_actors >= 1 and s.torch_threads >= 1 and s.cpus_per_actor > 0
                    assert _total_cpus(s) <= cpus + 1e-9, (cpus, gpus, memory, decode_in_actor, s)
    with pytest.raises(ValueError, match='no CPU'):
        size_pipeline(dict(CPU=0, GPU=1))


def test_sizing_waits_for_cpus_held_by_a_job_being_torn_down(monkeypatch):
    """No CPU free for a moment (the previous job's actors still exiting): sizing reads again until one is; a
    cluster whose CPUs stay busy is reported after the bounded wait, with what to do."""
    import ray
    reads = iter([{'CPU': 0.0}, {'CPU': 0.0}, {'CPU': 2.0, 'memory': 8e9}])
    monkeypatch.setattr(ray, 'available_resources', lambda: next(reads))
    monkeypatch.setattr(ray, 'cluster_resources', lambda: {'CPU': 2.0})
    monkeypatch.setattr(ray, 'nodes', lambda: [{'Alive': True, 'Resources': {'CPU': 2.0}}])
    assert cluster_resources(wait_s=5)['CPU'] == 2.0
    monkeypatch.setattr(ray, 'available_resources', lambda: {'CPU': 0.0})
    t0 = time.monotonic()
    busy = cluster_resources(wait_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 3 and busy['CPU'] == 0.0
    with pytest.raises(ValueError, match=r'no CPU free \(sizing waits up to 30 s for one\).*--address local'):
        size_pipeline(busy)


def test_given_address_that_does_not_answer_ends_start_at_once(monkeypatch):
    """--address or RAY_ADDRESS pointing where nothing listens: RayStarter.start() itself raises, naming the address
    and where it came from, and starts no thread (the command then ends before the driver's checks)."""
    import threading
    dead = f'127.0.0.1:{free_port()}'
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    for address, source in ((dead, '--address'), (None, 'RAY_ADDRESS')):
        if address is None:
            monkeypatch.setenv('RAY_ADDRESS', dead)
        before = {t.name for t in threading.enumerate()}
        t0 = time.monotonic()
        with pytest.raises(RayUnavailable, match=rf'no Ray cluster answers at {dead} \(from {source}\)'):
            RayStarter(address=address).start()
        assert time.monotonic() - t0 < 5
        assert 'numclip-ray' not in {t.name for t in threading.enumerate()} - before


def test_address_resolution(monkeypatch):
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    assert resolve_address('local')[0] is None
    assert resolve_address('10.1.2.3:6379') == ('10.1.2.3:6379', '--address')
    monkeypatch.setenv('RAY_ADDRESS', '127.0.0.1:1')
    assert resolve_address(None) == ('127.0.0.1:1', 'RAY_ADDRESS')
    assert resolve_address('local')[0] is None  # an explicit private instance wins over the environment
    port = free_port()
    with pytest.raises(RayUnavailable, match=rf'127\.0\.0\.1:{port}.*--address local'):
        probe(f'127.0.0.1:{port}', 'RAY_ADDRESS', timeout=5)


# --------------------------------------------------------------------------------------------------------------
# real runs

_RAY_BESIDE_CV2 = r"""
import copy, importlib.machinery, os, sys, time
class VendoredColoramaOnly:  # colorama as on a fresh install: only Ray's vendored copy, nothing in site-packages
    def find_spec(self, name, path=None, target=None):
        if name != 'colorama':
            return None
        vendored = [p for p in sys.path if p.endswith(os.path.join('ray', 'thirdparty_files'))]
        spec = importlib.machinery.PathFinder.find_spec(name, vendored) if vendored else None
        if spec is None:
            raise ModuleNotFoundError("No module named 'colorama'")
        return spec
sys.meta_path.insert(0, VendoredColoramaOnly())
from numclip_mm.batch.cluster import RayStarter
starter = RayStarter(address='local', num_cpus=1).start()
deadline = time.time() + 60
while 'ray.exceptions' not in sys.modules and starter.error is None and time.time() < deadline:
    saved = copy.copy(sys.path)  # what OpenCV's import does in the main thread (cv2/__init__.py bootstrap)
    time.sleep(0.002)
    sys.path = saved
import cv2  # the real thing, too
try:
    starter.wait(60)
    print('ray up')
finally:
    starter.close()
"""


def test_ray_starts_beside_an_import_that_restores_sys_path():
    """`import ray` in RayStarter's thread while the main thread imports OpenCV, which saves ``sys.path`` and
    assigns the copy back: Ray's vendored colorama stays importable (CI failed with "No module named 'colorama'")."""
    proc = subprocess.run([PY, '-c', _RAY_BESIDE_CV2], cwd=REPO, env=scorer_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and 'ray up' in proc.stdout, proc.stderr[-3000:]


def _png(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='PNG', compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('cluster')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(5)
    from numclip_mm.inference import Predictor
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': Predictor(cfg).model.state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    cat = root / 'catalog'
    cat.mkdir()
    cells = [_png(rng, 24, 24) for _ in range(64)]
    for f in range(4):  # 4 files x 1200 rows: long enough to be stopped mid-run
        pq.write_table(pa.table({'id': range(1200), 'image': pa.array(cells * 18 + cells[:48], pa.binary())}),
                       cat / f'p{f}.parquet', row_group_size=200)
    return dict(root=root, cfg=cfg, ckpt=str(ckpt), cat=cat)


def _score_cmd(env, out, *extra):
    return [PY, '-m', 'numclip_mm.batch.score', '--config', env['cfg'], '--checkpoint', env['ckpt'],
            '--input', str(env['cat']), '--output', str(out), *extra]


def test_dead_cluster_address_fails_fast(env, tmp_path):
    """A head started with `ray start` whose processes were then killed: --address and RAY_ADDRESS pointing at it
    end within 30 s, exit 2, with a message naming the address and how to score on a private instance."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix='rayd', dir='/tmp')  # short: Ray's unix socket paths must stay < 108 chars
    ports = [f'--{name}={free_port()}' for name in (
        'dashboard-port', 'dashboard-agent-listen-port', 'dashboard-agent-grpc-port', 'runtime-env-agent-port',
        'metrics-export-port', 'ray-client-server-port', 'node-manager-port', 'object-manager-port')]
    head = subprocess.Popen([str(Path(PY).parent / 'ray'), 'start', '--head', f'--port={port}', '--num-cpus=1',
                             '--node-ip-address=127.0.0.1', '--include-dashboard=false', '--disable-usage-stats',
                             f'--temp-dir={temp_dir}', *ports],
                            env=scorer_env(HOME=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log = head.communicate(timeout=180)[0]
        assert head.returncode == 0, log[-3000:]
        socket.create_connection(('127.0.0.1', port), timeout=5).close()  # it did answer
    finally:
        kill_group(head)  # the daemons `ray start` left run in its process group: gone now
        shutil.rmtree(temp_dir, ignore_errors=True)
    address = f'127.0.0.1:{port}'
    for extra, environ in (((f'--address={address}',), {}), ((), dict(RAY_ADDRESS=address))):
        t0 = time.monotonic()
        done = subprocess.run(_score_cmd(env, tmp_path / 'out', *extra), cwd=REPO, env=scorer_env(**environ),
                              capture_output=True, text=True, timeout=120, start_new_session=True)
        took = time.monotonic() - t0
        assert done.returncode == 2, done.stderr[-3000:]
        assert took < 30, took
        assert f'no Ray cluster answers at {address}' in done.stderr and '--address local' in done.stderr
        assert 'Traceback' not in done.stderr
        assert not (tmp_path / 'out').exists()


def test_sigint_while_the_actors_start_stops_the_job_cleanly(env, tmp_path):
    """SIGINT (Ctrl-C) while the actors start, once Ray is up and the sizing is said: exit 130 with one line (no
    traceback, no C++ stack dump), no temporary output, no process of the private Ray instance left; complete
    outputs (if any) are valid. (SIGTERM while scoring, then a re-run: test_batch_cli.)"""
    sig, moment = signal.SIGINT, 'scoring with'
    out = tmp_path / 'out'
    log_path = tmp_path / 'log.txt'
    mark = uuid.uuid4().hex  # in the environment of the run and of every process it starts (Ray's too)
    with open(log_path, 'w') as log:  # one actor: a second would only add its start-up before the signal
        proc = subprocess.Popen(_score_cmd(env, out, '--num-cpus', '2', '--num-actors', '1', '--batch-size', '8'),
                                cwd=REPO, env=scorer_env(**{RUN_MARK: mark}), stdout=log, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        deadline = time.time() + 200
        while moment not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, f'no {moment!r} line'
            time.sleep(0.2)
        assert len(processes_marked(mark)) > 1, 'the private instance should be running'
        proc.send_signal(sig)  # to the driver only, as `kill` or Ctrl-C in a terminal without job control
        t0 = time.monotonic()
        proc.wait(timeout=90)
        took = time.monotonic() - t0
        wait_until_gone(mark, timeout=5)  # nothing the run started outlives it
    finally:
        kill_group(proc)
    text = log_path.read_text()
    assert proc.returncode == 128 + sig, text[-3000:]
    tail = text[text.index('scoring with'):]
    assert 'Traceback' not in tail and 'Stack trace' not in tail and '*** ' not in tail, tail[-3000:]
    assert re.findall(r'numclip-score: stopped by (\w+)', tail) == [signal.Signals(sig).name]
    assert took < 60, took
    assert not [p.name for p in out.glob('.numclip-tmp-*')] if out.exists() else True
    for f in out.glob('p*.parquet'):  # committed outputs are complete
        assert pq.read_metadata(f).num_rows == 1200


def test_throughput_benchmark_smoke(tmp_path):
    """tools/benchmark/scorer_throughput.py's bare loop and scorer columns (its default engine, in-process here, and
    Ray's) on a 64-image PNG catalog, one round: each scores every image, the scorer finds the model's trace in the
    graph cache the benchmark filled beforehand (the cached columns are what they say), and the JSON holds the
    medians and the ratios to the bare loop."""
    out = tmp_path / 'throughput.json'
    done = run_tool_in_process('tools/benchmark/scorer_throughput.py', '--catalogs', 'png64', '--scale', '0.001',
                               '--batch-size', '8', '--repeats', '1', '--columns', 'bare', 'scorer', 'scorer_ray',
                               '--workdir', tmp_path / 'work', '--out', out)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(out.read_text())['catalogs']['png64']
    assert entry['images'] == 64 and set(entry['runs']) == {'bare', 'scorer', 'scorer_ray'}
    bare, scorer, on_ray = (entry['runs'][c][0] for c in ('bare', 'scorer', 'scorer_ray'))
    assert bare['images'] == scorer['images'] == on_ray['images'] == 64
    for run in (scorer, on_ray):
        assert run['graph'].startswith('the graph cache'), run['graph']
    assert scorer['engine'] == 'in-process' and scorer['ray_ready_s'] is None and scorer['first_prediction_s'] > 0
    assert on_ray['engine'] == 'ray' and on_ray['ray_ready_s'] > 0
    assert 0 < on_ray['first_prediction_s'] <= on_ray['actors_first_prediction_s']
    assert on_ray['processes'] > 3  # the driver, Ray's daemons and the actors were sampled
    for run in (bare, scorer, on_ray):
        assert run['steady_images_per_s'] > 0 and run['cpu_s_per_1000'] > 0
    assert entry['vs_bare']['bare']['images_per_s'] == 1.0
    for column in ('scorer', 'scorer_ray'):
        assert entry['vs_bare'][column]['images_per_s'] == pytest.approx(
            entry['median'][column]['images_per_s'] / entry['median']['bare']['images_per_s'])


def test_gpu_benchmark_smoke(tmp_path):
    """tools/benchmark/scorer_gpu.py --smoke: every column of a GPU session on CPU (the device ceiling, the bare
    loop, the DataLoader loop, the scorer's GPU layout: decode tasks feeding an inference actor), with the script's
    own JSON: what a GPU session will run, known to work before a GPU is lent."""
    out = tmp_path / 'gpu.json'
    done = run_tool_in_process('tools/benchmark/scorer_gpu.py', '--smoke', '--images', '40', '--files', '3',
                               '--bare-images', '12', '--batch-size', '8', '--precisions', 'bf16',
                               '--workdir', tmp_path / 'work', '--out', out)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results['failed'] == {} and set(results['runs']) == {'ceiling_bf16', 'bare_bf16', 'loader_bf16',
                                                                 'scorer_bf16'}
    catalog = sorted((tmp_path / 'work' / 'catalog').glob('*.parquet'))  # one writer process per file, ids in order
    assert [pq.read_table(f)['id'].to_pylist() for f in catalog] == [list(range(0, 14)), list(range(14, 27)),
                                                                    list(range(27, 40))]
    runs = results['runs']
    assert runs['ceiling_bf16']['images_per_s_model'] > 0
    assert runs['bare_bf16']['images'] == 12 and runs['loader_bf16']['images'] == 40
    assert runs['loader_bf16']['workers'] == max(1, os.cpu_count() - 1)
    run = runs['scorer_bf16']
    assert run['images'] == 40 and run['images_per_s'] > 0 and run['first_prediction_s'] > 0
    assert run['steady_images_per_s'] > 0 and 'scoring with 1 inference actor(s)' in run['sizing_line']
    assert run['sizing']['decode_in_actor'] is False and run['sizing']['num_actors'] == 1
    assert 'gpu_source' in run  # None here (no GPU tools); pynvml or nvidia-smi on a GPU machine
