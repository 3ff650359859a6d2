"""The scorer's entry points as a data team runs them: `python batch/score.py` (what `ray submit` runs), the
`numclip-score` console command, the `ray job submit` recipe of docs/batch_scoring.md as written, the example
cluster file, and a driver stopped mid-run (one re-run completes every file).

Each test starts its own Ray (in a subprocess) in its own process group and ends exactly that group.
"""
import contextlib
import io
import json
import os
import re
import shutil
import signal
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
from helpers import RUN_MARK, free_port, kill_group, scorer_env, wait_until_gone, write_tiny_config
from PIL import Image

from numclip_mm.inference import Predictor

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _png(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='PNG', compress_level=1)
    return buf.getvalue()


def _write_catalog(folder, rng, files: int, rows: int, row_group_size: int):
    """``files`` Parquet files ``p<i>.parquet`` of ``rows`` rows (id, image): 24 px PNGs, the last row undecodable."""
    folder.mkdir()
    for f in range(files):
        cells = [_png(rng, 24, 24) for _ in range(rows - 1)] + [b'broken']
        pq.write_table(pa.table({'id': range(rows), 'image': pa.array(cells, pa.binary())}),
                       folder / f'p{f}.parquet', row_group_size=row_group_size)
    return folder


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(3)
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': Predictor(cfg).model.state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    cat = _write_catalog(root / 'catalog', rng, files=2, rows=10, row_group_size=4)
    return dict(root=root, cfg=cfg, ckpt=str(ckpt), cat=cat)


def _check(out, cat):
    for f in sorted(cat.glob('*.parquet')):
        table = pq.read_table(out / f.name)
        assert table.num_rows == pq.read_metadata(f).num_rows
        errors = table.column('count_error').to_pylist()
        assert errors[-1] is not None and all(e is None for e in errors[:-1])


def test_console_entry_point_resolves_to_main(tmp_path):
    """The console command declared in setup.py resolves to the scorer's entry (`python batch/score.py` is run by the
    killed-then-rerun test below)."""
    spec = re.search(r"'numclip-score = ([\w.]+):(\w+)'", (REPO / 'setup.py').read_text())
    assert spec, 'setup.py declares no numclip-score console script'
    module, attr = spec.groups()
    helped = subprocess.run([PY, '-c', f'import sys; from {module} import {attr}; sys.exit({attr}(["--help"]))'],
                            cwd=tmp_path, env=scorer_env(), capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and 'usage: numclip-score' in helped.stdout
    installed = shutil.which('numclip-score', path=str(Path(PY).parent))
    if installed:  # an install made after setup.py gained the entry point
        again = subprocess.run([installed, '--help'], env=scorer_env(), capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and 'usage: numclip-score' in again.stdout


@pytest.mark.parametrize('engine', ['ray', 'in-process'])
def test_stopped_driver_then_one_rerun_completes(env, tmp_path, engine):
    """SIGTERM to the driver (as `kill` does) as soon as its first output is committed: it stops promptly with exit
    143 and one line (no traceback, no C++ stack dump), removes its temporaries and leaves no process of the private
    Ray instance it started (on Ray) and no scoring thread (in-process); every committed output is complete. One
    re-run on the same engine writes the rest and skips what was done: rows out == rows in. The re-run is `python
    batch/score.py` (what `ray submit` runs; no package context: it used to fail with "attempted relative import")
    with the default sizing, which is said in the first lines (Ray: a private 2-CPU instance, two 1-thread actors;
    in-process, the default on this machine: two threads); resume depends on the model only, not on the entry point,
    the engine or the sizing. (A SIGKILLed driver, which can clean nothing up, is the S3 test's: test_batch_s3;
    SIGINT while the actors start: test_batch_cluster.)"""
    rng = np.random.default_rng(1)
    cat = _write_catalog(tmp_path / 'cat', rng, files=6, rows=300, row_group_size=50)
    out = tmp_path / 'out'
    model = ['--config', env['cfg'], '--checkpoint', env['ckpt'], '--input', str(cat), '--output', str(out)]
    # Ray: one actor, front to back: the driver's head start would score most of this small catalog from the back
    # before the first output is committed (its writes queue behind it), and the job could end before the stop.
    # In-process: one thread (the default, auto, on this machine), so that most of the job is left at the stop
    first_options = (['--num-cpus', '2', '--num-actors', '1', '--no-head-start'] if engine == 'ray'
                     else ['--num-cpus', '1'])
    mark = uuid.uuid4().hex  # in the environment of the run and of every process it starts (Ray's too)
    log_path = tmp_path / 'first.log'
    with open(log_path, 'w') as log:
        first = subprocess.Popen([PY, '-m', 'numclip_mm.batch.score', *model, '--batch-size', '8', *first_options],
                                 cwd=REPO, env=scorer_env(**{RUN_MARK: mark}), stdout=log, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(out.glob('p*.parquet')):
            assert first.poll() is None, 'the run ended before it could be stopped: ' + log_path.read_text()[-3000:]
            assert time.time() < deadline, 'no output appeared'
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)  # to the driver only
        t0 = time.monotonic()
        first.wait(timeout=90)
        took = time.monotonic() - t0
        wait_until_gone(mark, timeout=5)  # nothing the run started outlives it
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    text = log_path.read_text()
    assert first.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert f'engine: {"Ray" if engine == "ray" else "threads of this process, no Ray"} (' in text
    tail = text[text.index('scoring with'):]
    assert 'Traceback' not in tail and 'Stack trace' not in tail and '*** ' not in tail, tail[-3000:]
    assert re.findall(r'numclip-score: stopped by (\w+)', tail) == ['SIGTERM']
    assert took < (60 if engine == 'ray' else 10), took
    assert not list(out.glob('.numclip-tmp-*'))
    for f in out.glob('p*.parquet'):  # committed outputs are complete
        assert pq.read_metadata(f).num_rows == 300
    done_before = sorted(p.name for p in out.glob('p*.parquet'))
    assert 0 < len(done_before) < 6, done_before
    script_env = scorer_env()
    script_env.pop('PYTHONPATH')  # as on a head node: only the script's path, no package context
    second = subprocess.run([PY, str(REPO / 'batch' / 'score.py'), *model, '--num-cpus', '2', '--summary-json',
                             str(tmp_path / 'summary.json'), *(['--engine', 'ray'] if engine == 'ray' else [])],
                            cwd=tmp_path, env=script_env, capture_output=True, text=True, timeout=240,
                            start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / 'summary.json').read_text())
    skipped = sorted(Path(f['input']).name for f in summary['files'] if f['status'] == 'skipped')
    assert skipped == done_before and summary['files_written'] == 6 - len(done_before)
    assert sorted(p.name for p in out.iterdir()) == [f'p{f}.parquet' for f in range(6)]  # no temporaries left
    _check(out, cat)
    assert f'"rows_scored": {300 * (6 - len(done_before))}' in second.stdout
    assert summary['models_loaded_as'] == "the driver's TorchScript trace of the model"
    assert summary['engine']['name'] == engine
    if engine == 'in-process':
        assert 'no Ray cluster named, no GPU, 2 CPU(s)' in summary['engine']['reason']
        assert re.search(r'scoring with 2 threads x 1 torch thread\(s\), batches of 64, one copy of each model',
                         second.stderr), second.stderr[-3000:]
        assert summary['sizing'] == dict(threads=2, torch_threads=1, batch_size=64)
        assert summary['outputs_written_by'] == "the driver's threads" and 'ray_ready_s' not in summary
        assert re.search(r'first predictions back [\d.]+ s after the start \(in-process\)', second.stderr)
        return
    assert re.search(r'2 CPUs and 0 GPUs available .*scoring with 2 inference actor\(s\) x 1 torch thread\(s\) '
                     r'\(1 CPU each\), decoding in the actors, batches of 64', second.stderr), second.stderr[-3000:]
    assert summary['sizing']['num_actors'] == 2
    assert summary['outputs_written_by'] == 'the driver (a private instance on this machine)'  # no task processes
    # the driver scored row groups from the back while Ray and the actors started (a private instance); the outputs
    # checked above are the same whoever scored a row
    assert summary['head_start']['used'] and summary['head_start']['rows'] > 0, summary['head_start']
    assert 0 < summary['first_output_s'] <= summary.get('actors_first_output_s', float('inf'))
    assert re.search(r"first predictions back [\d.]+ s after the start \(the driver's", second.stderr)


def test_cluster_file_is_valid():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((REPO / 'batch' / 'cluster.yaml').read_text())
    validate_config(prepare_config(config))
    assert any('pip install -c requirements/constraints.txt' in c for c in config['setup_commands'])


def _stub(path, body):
    path.write_text('#!/bin/bash\n' + body)
    path.chmod(0o755)


def test_cluster_file_is_safe_on_a_shared_host(tmp_path):
    """batch/cluster.yaml's commands, run twice as `ray up` would re-run them (python3, pip and ray stubbed): no
    `ray stop`, one venv, one ~/.bashrc line, and Ray started once per node: the second run finds this cluster's
    own process (matched by its port / head address, never the checking shell itself) and leaves it alone."""
    import yaml
    config = yaml.safe_load((REPO / 'batch' / 'cluster.yaml').read_text())
    commands = config['setup_commands'] + config['head_start_ray_commands'] + config['worker_start_ray_commands']
    assert not any(re.search(r'(^|[;&|]\s*)ray stop', c) for c in commands)
    port = str(free_port())  # not 6379: another Ray on this machine must not count as this cluster's
    home, bin_dir = tmp_path / 'home', tmp_path / 'bin'
    (home / 'numclip-mm').mkdir(parents=True)
    bin_dir.mkdir()
    calls = tmp_path / 'calls.log'
    _stub(bin_dir / 'python3', f'echo "python3 $*" >> {calls}\nmkdir -p "$3/bin"\n'
                               f'printf \'#!/bin/bash\\necho "pip $*" >> {calls}\\n\' > "$3/bin/pip"\n'
                               f'cp "$3/bin/pip" "$3/bin/python"\nchmod +x "$3/bin/pip" "$3/bin/python"\n')
    # `ray start` leaves a process behind whose command line looks like the real one's (GCS port / raylet address)
    _stub(bin_dir / 'ray', f'echo "ray $*" >> {calls}\n'
                           f'if [[ "$*" == *--head* ]]; then args="gcs_server --gcs_server_port={port} --x"; '
                           f'else args="raylet --gcs-address=$RAY_HEAD_IP:{port} --x"; fi\n'
                           f'setsid {PY} -c "import time; time.sleep(120)" $args > /dev/null 2>&1 < /dev/null &\n'
                           f'echo $! >> {tmp_path / "pids"}\n')
    env = dict(os.environ, HOME=str(home), PATH=f'{bin_dir}:{os.environ["PATH"]}', RAY_HEAD_IP='127.0.0.1')
    try:
        for _ in range(2):
            for command in commands:
                subprocess.run(['bash', '-c', command.replace('6379', port)], env=env, check=True, timeout=60)
        log = calls.read_text().splitlines()
        assert sum(line.startswith('python3 -m venv') for line in log) == 1
        assert (home / '.bashrc').read_text().splitlines() == ['source ~/numclip-env/bin/activate']
        starts = [line for line in log if line.startswith('ray start')]
        assert len(starts) == 2 and '--head' in starts[0] and f'--address=127.0.0.1:{port}' in starts[1]
    finally:
        for pid in (tmp_path / 'pids').read_text().split() if (tmp_path / 'pids').exists() else ():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------------------------------------------
# docs/batch_scoring.md's `ray job submit` recipe, as written

def documented_recipe() -> str:
    text = (REPO / 'docs' / 'batch_scoring.md').read_text()
    found = re.search(r'<!-- recipe: ray job submit[^>]*-->\s*```bash\n(.*?)```', text, re.S)
    assert found, "docs/batch_scoring.md lost its ray job submit recipe"
    return found.group(1)


def test_documented_ray_job_submit_recipe(env, tmp_path):
    """Run docs/batch_scoring.md's recipe in a fresh shell (a new HOME: no token yet, no RAY_* variables), changing
    only the ports (free ones, so another Ray on this machine cannot clash), Ray's temp dir and the demo's file
    names."""
    recipe = documented_recipe()
    port, dash, agent, agent_grpc, runtime_env, metrics, client = (free_port() for _ in range(7))
    temp_dir = tempfile.mkdtemp(prefix='rayt', dir='/tmp')  # short: Ray's unix socket paths must stay < 108 chars
    start = 'ray start --head --dashboard-host 127.0.0.1'
    assert start in recipe and 'http://127.0.0.1:8265' in recipe
    assert '--working-dir configs ' in recipe  # only the configs are uploaded: no catalog, output or checkpoint
    out = tmp_path / 'scored'
    script = (recipe
              .replace(start, f'{start} --port={port} --num-cpus=2 --node-ip-address=127.0.0.1 '
                              f'--dashboard-port={dash} --dashboard-agent-listen-port={agent} '
                              f'--dashboard-agent-grpc-port={agent_grpc} --runtime-env-agent-port={runtime_env} '
                              f'--metrics-export-port={metrics} --ray-client-server-port={client} '
                              f'--disable-usage-stats --temp-dir={temp_dir}')
              .replace('http://127.0.0.1:8265', f'http://127.0.0.1:{dash}')
              .replace('--config numclip_demo.py', f"--config {env['cfg']}")
              .replace('"$PWD/work_dirs/numclip_demo/epoch_30.pth"', env['ckpt'])
              .replace('"$PWD/catalog/"', str(env['cat']))
              .replace('"$PWD/scored/"', str(out)))
    home = tmp_path / 'home'
    home.mkdir()
    shell_env = scorer_env(HOME=str(home), PATH=f'{Path(PY).parent}:{os.environ.get("PATH", "")}')
    shell_env.pop('PYTHONPATH')  # the job must find the package in the environment
    log = tmp_path / 'recipe.log'  # a file, not a pipe: the daemons `ray start` leaves behind inherit it
    with open(log, 'w') as sink:
        proc = subprocess.Popen(['bash', '-e', '-c', script], cwd=REPO, env=shell_env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=300)
        output = log.read_text()
        assert proc.returncode == 0, output[-4000:]
        assert 'succeeded' in output.lower()
        assert 'outputs written by Ray tasks on the workers' in output  # a cluster's outputs never pass the driver
        assert "actors load the driver's TorchScript trace of the model" in output  # through the object store
        assert (home / '.ray' / 'auth_token').exists()  # token auth was on, and the CLI used it
        _check(out, env['cat'])
    finally:
        kill_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
