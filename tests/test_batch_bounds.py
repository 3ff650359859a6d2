"""What the batch scorer bounds (docs/batch_scoring.md, "What is bounded"): every read of a path cell in bytes, time
and kind (FIFOs, devices, /proc, paths leaving --path-root, a stalled or slow loopback http server), error texts
(the cause named, short, credentials and query strings redacted in the output and the log), cleanup after a full
disk, and the checks before any work (an unwritable output folder, a config that does not load: exit 2).

The Ray runs share one instance (2 CPUs, loopback) and each test has a SIGALRM timeout (TEST_TIMEOUT_S).
"""
import base64
import contextlib
import errno
import io
import logging
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import run_tool_in_process, write_tiny_config
from PIL import Image, PngImagePlugin

from numclip_mm.batch import catalog
from numclip_mm.batch.columns import prediction_schema
from numclip_mm.batch.decode import CellDecoder
from numclip_mm.batch.errortext import MAX_ERROR_CHARS
from numclip_mm.batch.pipeline import ScoreOptions, ScoringFailed, prepare, run, score_catalog
from numclip_mm.batch.score import main as cli_main
from numclip_mm.datasets import UnreadableImageError, decode_bgr
from numclip_mm.inference import Predictor

ROOT = Path(__file__).resolve().parents[1]
TEST_TIMEOUT_S = 180
SECRET, TOKEN = 'hunter2', 'tok3n'


def _png(h=20, w=30, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, 'PNG')
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# a loopback http server with a stalled, a slow, a failing, a looping and a password-protected route

class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.server.requests.append(('HEAD', self.path))
        self.send_error(405)

    def do_GET(self):
        self.server.requests.append(('GET', self.path))
        route = self.path.split('?')[0]
        release = self.server.release
        if route == '/ok.png' or (route == '/auth.png' and self.headers.get('Authorization') ==
                                  'Basic ' + base64.b64encode(f'alice:{SECRET}'.encode()).decode()):
            self._send(200, _png())
        elif route == '/auth.png':
            self.send_error(401)
        elif route == '/stall':  # claims 5 GB, sends 10 bytes, then nothing until the test ends
            self.send_response(200)
            self.send_header('Content-Length', str(5 << 30) if 'claim' in self.path else '1000')
            self.end_headers()
            self.wfile.write(b'\x89PNG\r\n\x1a\n..')
            self.wfile.flush()
            release.wait(60)
        elif route == '/slow':  # answers, but only after longer than the read timeout
            release.wait(4)
            self._send(200, _png())
        elif route == '/loop':
            self.send_response(302)
            self.send_header('Location', '/loop')
            self.send_header('Content-Length', '0')
            self.end_headers()
        elif route == '/fail':
            self.send_error(500)
        else:
            self.send_error(404)

    def _send(self, code, body):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the reader may have given up already
            self.send_response(code)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def server():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    srv.daemon_threads = True
    srv.requests, srv.release = [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True)
    thread.start()
    try:
        yield srv, f'http://127.0.0.1:{srv.server_address[1]}'
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------------------------------------------
# reads bounded in kind

def test_fifo_device_proc_and_folder_are_row_errors_without_blocking(tmp_path):
    fifo = tmp_path / 'pipe.png'
    os.mkfifo(fifo)  # nobody ever writes: open() without O_NONBLOCK would block for ever
    read = catalog.ImageReader()
    start = time.monotonic()
    for path, said in [(fifo, 'a FIFO'), ('/dev/zero', 'under /dev'), ('/proc/self/environ', 'under /proc'),
                       (tmp_path, 'a directory')]:
        with pytest.raises(catalog.ImageRefused, match=said):
            read(str(path))
    assert time.monotonic() - start < 2
    link = tmp_path / 'zero.png'
    link.symlink_to('/dev/zero')  # a link does not hide what it points to
    with pytest.raises(catalog.ImageRefused, match='under /dev'):
        read(str(link))
    image, error = CellDecoder(None, 'path')(str(fifo))
    assert image is None and 'FIFO, not a regular file' in error


def test_reads_never_pass_the_byte_limit(tmp_path):
    big = tmp_path / 'big.png'
    big.write_bytes(b'x' * 5000)
    with pytest.raises(catalog.ImageTooLarge, match='5000 bytes > 4096'):
        catalog.ImageReader()(str(big), max_bytes=4096)
    assert catalog.ImageReader()(str(big), max_bytes=5000) == b'x' * 5000
    assert CellDecoder(None, 'path').max_bytes == catalog.DEFAULT_MAX_IMAGE_BYTES == 64 << 20  # on by default


def test_path_root_is_a_boundary(tmp_path):
    root, outside = tmp_path / 'root', tmp_path / 'outside'
    (root / 'sub').mkdir(parents=True)
    outside.mkdir()
    (root / 'sub' / 'a.png').write_bytes(b'inside')
    (outside / 'b.png').write_bytes(b'secret')
    (root / 'escape.png').symlink_to(outside / 'b.png')
    (root / 'alias.png').symlink_to(root / 'sub' / 'a.png')
    read = catalog.ImageReader(str(root))
    assert read('sub/a.png') == read('alias.png') == read(str(root / 'sub' / 'a.png')) == b'inside'
    assert read('file://' + str(root / 'sub' / 'a.png')) == b'inside'
    for cell in ['../outside/b.png', 'sub/../../outside/b.png', str(outside / 'b.png'), 'escape.png',
                 'file://' + str(outside / 'b.png')]:
        with pytest.raises(catalog.ImageRefused, match='outside --path-root'):
            read(cell)
    assert catalog.ImageReader(cwd=str(root))('../outside/b.png') == b'secret'  # no --path-root: no boundary
    with pytest.raises(catalog.ImageRefused, match='outside --path-root'):
        catalog.ImageReader('memory://bucket/images')('../other/x.png')
    with pytest.raises(catalog.ImageRefused, match='scheme ftp:// is not read'):
        read('ftp://example.invalid/x.png')


# --------------------------------------------------------------------------------------------------------------
# reads bounded in time; error texts

def test_http_reads_are_one_get_bounded_in_time_with_the_cause_named(server):
    srv, url = server
    read = catalog.ImageReader(timeout=1.0)
    assert read(f'{url}/ok.png') == _png()
    for cell, error, said in [(f'{url}/stall', catalog.ImageUnreachable, 'timed out: no complete answer within 1 s'),
                              (f'{url}/slow', catalog.ImageUnreachable, 'within 1 s'),
                              (f'{url}/fail', catalog.ImageUnreachable, 'HTTP 500'),
                              (f'{url}/loop', catalog.ImageUnreachable, 'redirects in a loop'),
                              (f'{url}/gone.png', catalog.ImageNotFound, 'HTTP 404')]:
        start = time.monotonic()
        with pytest.raises(error, match=said):
            read(cell)
        assert time.monotonic() - start < 2.5, cell  # the deadline holds whatever the server does
    with pytest.raises(catalog.ImageTooLarge, match='Content-Length'):  # refused from the header, body unread
        read(f'{url}/stall?claim', max_bytes=1000)
    assert not [r for r in srv.requests if r[0] == 'HEAD']  # one GET per read, no HEAD first
    assert sum(r == ('GET', '/slow') for r in srv.requests) == 1
    assert read(f'http://alice:{SECRET}@127.0.0.1:{srv.server_address[1]}/auth.png') == _png()  # Basic auth
    with pytest.raises(catalog.ImageUnreachable, match='HTTP 401') as err:
        read(f'http://alice:wrong{SECRET}@127.0.0.1:{srv.server_address[1]}/auth.png?sig={TOKEN}')
    assert SECRET not in str(err.value) and TOKEN not in str(err.value) and 'http://***@127.0.0.1' in str(err.value)


def test_error_texts_are_short_and_never_echo_a_whole_cell():
    cell = base64.b64encode(os.urandom(12_000)).decode()  # a 16 kB base64 image where a path was expected
    image, error = CellDecoder(None, 'path')(cell)
    assert image is None and 'File name too long' in error and f'({len(cell)} characters)' in error
    assert len(error) <= MAX_ERROR_CHARS


def test_decoder_names_why_an_image_cannot_be_decoded():
    ico = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ico, format='ICO')
    with pytest.raises(UnreadableImageError, match='ICO is not a format the cv2 decoder reads'):
        decode_bgr(ico.getvalue(), 'input')
    info = PngImagePlugin.PngInfo()
    info.add_itxt('comment', 'x' * 9_000_000)
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png, format='PNG', pnginfo=info)
    with pytest.raises(UnreadableImageError, match=r"PNG iTXt chunk of 90000\d\d bytes exceeds libpng's"):
        decode_bgr(png.getvalue(), 'input')


# --------------------------------------------------------------------------------------------------------------
# cleanup and checks before any work

@contextlib.contextmanager
def _small_tmpfs(folder: Path, size='256k', options=''):
    """A tmpfs mounted at ``folder`` (root only); skips the caller when mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = f'size={size}' + (f',{options}' if options else '')
    try:
        refused = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(folder)],
                                 capture_output=True).returncode
    except OSError:  # no mount command
        refused = True
    if refused:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(['umount', '-l', str(folder)], check=False)


def _plan(tmp_path, out_dir, rows=40):
    src = tmp_path / 'in.parquet'
    pq.write_table(pa.table({'image': pa.array([os.urandom(20_000) for _ in range(rows)], pa.binary())}), src)
    fs_in, files = catalog.resolve_inputs(str(src))
    plan = catalog.FilePlan(files[0], str(out_dir / 'in.parquet'), rows, [rows],
                            catalog.file_identity(fs_in, files[0]))
    preds = prediction_schema().empty_table()
    preds = pa.table({name: pa.array([i if name.startswith('__') else None for i in range(rows)], typ)
                      for name, typ in zip(preds.schema.names, preds.schema.types)})
    return plan, preds


class _DiskFullAt(io.FileIO):
    """A file on a disk with ``budget`` bytes left: a write past it raises ENOSPC, as the kernel does."""
    budget = 0

    def write(self, data):
        if self.tell() + len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _write_fails(tmp_path, out):
    plan, preds = _plan(tmp_path, out)
    names = {k: f'count_{k}' for k in ('value', 'label', 'probability', 'error')}
    with pytest.raises(OSError) as err:
        catalog.write_scored_file(plan, preds, names, 'image', {}, lambda *a: None)
    assert err.value.errno == errno.ENOSPC
    assert list(out.iterdir()) == []  # no .numclip-tmp-* file keeps the disk full


def test_temp_file_is_removed_after_a_full_disk(tmp_path, monkeypatch):
    with _small_tmpfs(tmp_path / 'small') as mounted:
        if mounted is None:  # no mount allowed here: the disk's answer injected into the temporary file
            _DiskFullAt.budget = 100_000
            monkeypatch.setattr(catalog, 'open', lambda path, mode: io.BufferedWriter(_DiskFullAt(path, 'w')),
                                raising=False)
        _write_fails(tmp_path, tmp_path / 'small' / 'out')  # 800 kB of cells into 256 kB


def test_temp_file_is_removed_when_only_the_final_flush_fails(tmp_path, monkeypatch):
    """The disk fills on the last buffered bytes: the commit's flush raises, and so does the close in the abort;
    the temporary must go all the same."""
    plan, preds = _plan(tmp_path, tmp_path / 'probe')
    names = {k: f'count_{k}' for k in ('value', 'label', 'probability', 'error')}
    catalog.write_scored_file(plan, preds, names, 'image', {}, lambda *a: None)
    _DiskFullAt.budget = (tmp_path / 'probe' / 'in.parquet').stat().st_size - 16  # the footer's tail does not fit
    monkeypatch.setattr(catalog, 'open', lambda path, mode: io.BufferedWriter(_DiskFullAt(path, 'w')),
                        raising=False)
    (tmp_path / 'out').mkdir()
    _write_fails(tmp_path, tmp_path / 'out')


def test_unwritable_output_is_refused_before_any_work(tmp_path, env, capsys, monkeypatch):
    """... and before Ray is started: the command ends at once and leaves nothing running."""
    from numclip_mm.batch import score
    starts = []
    monkeypatch.setattr(score.RayStarter, 'start', lambda self: starts.append(self) or self)
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    args = ['--config', env['cfg'], '--checkpoint', env['ckpt'], '--input', str(env['cat'])]
    assert cli_main(args + ['--output', str(blocker / 'out')]) == 2
    assert 'is not writable' in capsys.readouterr().err
    assert cli_main(args + ['--output', str(blocker)]) == 2
    assert 'is a file; it must be a folder' in capsys.readouterr().err
    with _small_tmpfs(tmp_path / 'ro', options='ro') as mounted:
        if mounted is not None:
            assert cli_main(args + ['--output', str(mounted / 'out')]) == 2
            assert 'Read-only file system' in capsys.readouterr().err
    assert starts == []


def test_engine_asked_for_with_what_it_cannot_do_is_exit_2_before_any_work(tmp_path, env, capsys, monkeypatch):
    """--engine in-process with a Ray-only option (or a cluster's address) ends the command with exit 2 and one line
    naming them, before Ray is started or the model is loaded."""
    from numclip_mm.batch import score
    starts = []
    monkeypatch.setattr(score.RayStarter, 'start', lambda self: starts.append(self) or self)
    monkeypatch.setattr(score, 'prepare', lambda *a, **k: pytest.fail('the job was prepared'))
    args = ['--config', env['cfg'], '--checkpoint', env['ckpt'], '--input', str(env['cat']), '--output',
            str(tmp_path / 'out'), '--engine', 'in-process']
    assert cli_main(args + ['--num-actors', '2', '--decode-in', 'tasks']) == 2
    assert capsys.readouterr().err.strip() == ('error: --engine in-process scores in this process, without Ray: '
                                               '--num-actors, --decode-in need Ray (leave --engine out, or give '
                                               '--engine ray)')
    assert cli_main(args + ['--address', '127.0.0.1:1']) == 2
    assert '--address 127.0.0.1:1 need Ray' in capsys.readouterr().err
    assert starts == []


def test_config_that_does_not_load_is_exit_2_with_file_and_line(tmp_path, env, capsys, monkeypatch):
    """A config with a syntax error or one that raises ends the scorer (before Ray is started) and the training
    tools with exit 2 and one line naming the file and the line."""
    from numclip_mm.batch import score
    starts = []
    monkeypatch.setattr(score.RayStarter, 'start', lambda self: starts.append(self) or self)
    broken = tmp_path / 'broken.py'
    broken.write_text("model = dict(\n    clip=dict(\n")
    raising = tmp_path / 'raising.py'
    raising.write_text(f"_base_ = [{env['cfg']!r}]\nscale = 1\nwidth = 64 / (scale - 1)\n")
    base = ['--checkpoint', env['ckpt'], '--input', str(env['cat']), '--output', str(tmp_path / 'o')]
    assert cli_main(['--config', str(broken), *base]) == 2
    assert f"{broken}:2: SyntaxError: '(' was never closed" in capsys.readouterr().err
    assert cli_main(['--config', str(raising), *base]) == 2
    assert f'{raising}:3: ZeroDivisionError: division by zero' in capsys.readouterr().err
    assert starts == []
    for tool in ('tools/train.py', 'tools/calibrate.py'):  # the training tools share the loader and the exit code
        extra = [env['ckpt']] if tool.endswith('calibrate.py') else []
        proc = run_tool_in_process(tool, raising, *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (f'error: cannot load config {raising}:3: ZeroDivisionError: '
                                                        f'division by zero')


# --------------------------------------------------------------------------------------------------------------
# end to end on Ray

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('bounds')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(0)
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': Predictor(cfg).model.state_dict(), 'meta': {}}, ckpt)
    cat = root / 'catalog'
    cat.mkdir()
    pq.write_table(pa.table({'image': pa.array([_png(), b'nope'], pa.binary())}), cat / 'part-0.parquet')
    return dict(root=root, cfg=cfg, ckpt=str(ckpt), cat=cat)


def test_hostile_path_cells_end_in_time_redacted_in_output_and_log(env, server, ray_session, tmp_path):
    srv, url = server
    port = srv.server_address[1]
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'ok.png').write_bytes(_png())
    os.mkfifo(images / 'pipe.png')
    cells = ['ok.png', 'pipe.png', '/dev/zero', '../escape.png', f'{url}/stall', f'{url}/ok.png',
             f'http://alice:{SECRET}@127.0.0.1:{port}/fail?token={TOKEN}', f'{url}/loop?X-Amz-Signature={TOKEN}']
    want = [None, 'FIFO', 'outside --path-root', 'outside --path-root', 'within 1 s', None, 'HTTP 500',
            'redirects in a loop']
    cat = tmp_path / 'paths'
    cat.mkdir()
    pq.write_table(pa.table({'path': cells}), cat / 'paths.parquet')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('numclip_mm.batch')
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    start = time.monotonic()
    try:
        report = score_catalog(ScoreOptions(config=env['cfg'], checkpoint=env['ckpt'], input=str(cat),
                                            output=str(tmp_path / 'out'), image_column=None, path_column='path',
                                            path_root=str(images), read_timeout=1.0, batch_size=8))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert time.monotonic() - start < 90
    table = pq.read_table(tmp_path / 'out' / 'paths.parquet')
    assert table.column('path').to_pylist() == cells and report['rows_scored'] == len(cells)  # rows in == rows out
    errors = table.column('count_error').to_pylist()
    for error, said in zip(errors, want):
        assert (error is None) if said is None else (said in error), (said, error)
    assert f'http://***@127.0.0.1:{port}/fail?***' in errors[6] and f'{url}/loop?***' in errors[7]
    log = '\n'.join(r.getMessage() for r in records)
    assert 'rows with an error; the first, row 1' in log
    for text in [*errors[1:5], *errors[6:], log]:
        assert SECRET not in text and TOKEN not in text


def test_missing_checkpoint_is_reported_as_such(env, ray_session, tmp_path):
    """A checkpoint deleted between planning and the start of actors that build the model themselves (``graph=False``;
    actors that load the driver's graph never read it): the job names it, not 'out of memory'."""
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(Path(env['ckpt']).read_bytes())
    job = prepare(ScoreOptions(config=env['cfg'], checkpoint=str(ckpt), input=str(env['cat']),
                               output=str(tmp_path / 'out'), max_retries=0, graph=False))
    ckpt.unlink()
    with pytest.raises(ScoringFailed) as err:
        run(job)
    text = str(err.value)
    assert text.startswith('the inference actors could not start:') and 'model.pth' in text, text
    assert 'out of memory' not in text and '--batch-size' not in text
