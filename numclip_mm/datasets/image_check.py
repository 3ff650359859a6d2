"""Up-front check of a data set's images: find the missing and unreadable ones before training reaches them."""
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

from .transforms import DEFAULT_MAX_PIXELS, UnreadableImageError, load_sample_bgr


def check_one_image(info: dict, where: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                    backend: str = 'cv2') -> Optional[str]:
    """None if the sample's image (``img``, ``img_bytes`` or ``img_path``) loads as training loads it, else the
    reason."""
    try:
        load_sample_bgr(info, where, max_pixels, backend)
    except UnreadableImageError as err:
        return str(err)
    except KeyError as err:  # no image source at all
        return err.args[0]
    return None


def find_unreadable_images(data_list: Sequence[dict], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                           backend: str = 'cv2', num_threads: int = 4,
                           progress: Optional[Callable[[int, int], None]] = None) -> List[Tuple[int, str]]:
    """``(index, reason)`` of every sample whose image is missing or cannot be decoded, in index order.

    Each image is read and fully decoded with the training decoder (so truncated files are found too), a few at a
    time on threads (file reads and cv2 decoding release the GIL); ``progress(done, total)`` is called as it goes.
    """
    total = len(data_list)

    def check(i: int) -> Optional[str]:
        return check_one_image(data_list[i], f'sample {i}', max_pixels, backend)

    bad: List[Tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for i, reason in enumerate(pool.map(check, range(total), chunksize=16)):
            if reason is not None:
                bad.append((i, reason))
            if progress is not None and ((i + 1) % 500 == 0 or i + 1 == total):
                progress(i + 1, total)
    return bad


def log_progress(logger: Callable[[str], None], every_s: float = 5.0) -> Callable[[int, int], None]:
    """A ``progress`` callback that logs at most every ``every_s`` seconds (and at the end)."""
    start = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= every_s:
            last = now
            logger(f'checked {done}/{total} images ({now - start:.1f} s)')
    return report
