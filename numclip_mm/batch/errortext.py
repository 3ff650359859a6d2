"""What an error text may show, in an output's error column and in the log alike: the cause in at most
``MAX_ERROR_CHARS`` characters, URLs without their credentials (``user:password@``) or query strings and fragments
(``?token=...``), and never a whole cell (a path cell may hold kilobytes of base64)."""
import re

MAX_ERROR_CHARS = 300   # an error text, whole
MAX_CELL_CHARS = 120    # a cell (path or URI) shown inside an error text

_SCHEME = r'[A-Za-z][A-Za-z0-9+.\-]*://'
# user:password@ in a URL's authority (greedy to the authority's last '@': passwords may hold '@')
_USERINFO = re.compile(rf'({_SCHEME})[^/\s?#]*@')
# ?query and #fragment of a URL, up to whitespace or a closing quote/bracket
_QUERY = re.compile(rf'({_SCHEME}[^\s?#\'"<>()]*)[?#][^\s\'"<>()]*')


def redact(text: str) -> str:
    """``text`` with every URL's credentials and query string/fragment replaced by ``***``."""
    text = _USERINFO.sub(r'\1***@', text)
    return _QUERY.sub(r'\1?***', text)


def shown_cell(cell: str) -> str:
    """A path/URI cell as an error may show it: redacted, and cut to ``MAX_CELL_CHARS`` with its length said."""
    text = redact(str(cell))
    if len(text) <= MAX_CELL_CHARS:
        return text
    return f'{text[:MAX_CELL_CHARS - 40]}... ({len(cell)} characters)'


def error_text(message: str) -> str:
    """A row error or log message: redacted, one line, at most ``MAX_ERROR_CHARS`` characters."""
    text = ' '.join(redact(str(message)).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + '...'
