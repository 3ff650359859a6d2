"""Loading a config file with an error that names the file and the line (not a traceback through mmengine).

``tools/train.py``, ``tools/test.py``, ``tools/calibrate.py`` and the batch scorer end with exit code 2 and this
one line when a config cannot be loaded (a syntax error, an exception while it runs, a missing base file).
"""
import os
import re
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:  # mmengine is imported when a config is loaded, not with this module (the inference path is lazy)
    from mmengine.config import Config


class ConfigLoadError(ValueError):
    """A config file that cannot be loaded; the message names the file and, where known, the line."""


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _parsed_file(err: SyntaxError, default: str) -> str:
    """The file mmengine was parsing (``ast.parse`` of its text names none): the deepest frame's ``filename``."""
    found, tb = default, err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_locals.get('filename')
        if isinstance(name, str) and os.path.isfile(name):
            found = name
        tb = tb.tb_next
    return found


def _where(err: BaseException, path: str) -> Optional[Tuple[str, int]]:
    """(file, line) of the config code that failed: the syntax error's position, or the deepest frame run as config
    code (mmengine runs a config with ``_base_`` among its globals, so a base file's line is found too)."""
    for e in _chain(err):
        if isinstance(e, SyntaxError) and e.lineno:
            filename = e.filename if e.filename and not e.filename.startswith('<') else _parsed_file(e, path)
            return filename, e.lineno
    found = None
    for e in _chain(err):
        tb = e.__traceback__
        while tb is not None:
            if '_base_' in tb.tb_frame.f_globals and not tb.tb_frame.f_code.co_filename.startswith('<'):
                found = tb.tb_frame.f_code.co_filename, tb.tb_lineno
            tb = tb.tb_next
        if found:
            return found
    return None


def load_config_file(path: str, **kwargs) -> 'Config':
    """``Config.fromfile(path, **kwargs)``; :class:`ConfigLoadError` naming the file and line when it cannot be
    loaded."""
    from mmengine.config import Config
    if not os.path.isfile(path):
        raise ConfigLoadError(f'config not found: {path}')
    try:
        return Config.fromfile(path, **kwargs)
    except Exception as err:  # noqa: BLE001  (a config is code: it can raise anything)
        where = _where(err, path)
        cause = next((e for e in _chain(err) if isinstance(e, SyntaxError) and e.lineno), err)
        text = cause.msg if isinstance(cause, SyntaxError) else str(cause)
        text = re.sub(r'\s+', ' ', text).strip()
        place = f'{where[0]}:{where[1]}' if where else path
        raise ConfigLoadError(f'cannot load config {place}: {type(cause).__name__}: {text}') from err
