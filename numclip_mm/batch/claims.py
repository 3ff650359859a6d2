"""Who scores which work item when the driver helps: first claim wins, atomically, on this machine's disk.

While the actors start, the driver scores work items itself (:mod:`numclip_mm.batch.head_start`), from the back of
the list; the actors go front to back through every item of the dataset and skip the ones the driver took. A claim
is a file named after the item, made with ``os.link`` of a file that already holds the claimer's name, so it
appears whole or not at all and two claimers can never both win. A claimer that finds its own side's claim goes
on: for the pool that is Ray retrying the item on a restarted actor after the first one died. Only a job whose
actors run on the driver's machine (a private Ray instance) uses claims: the folder is local.
"""
import os
import shutil
import tempfile
import uuid

DRIVER, POOL = 'driver', 'pool'


def item_key(file_index: int, row_group: int, start: int = 0) -> str:
    """A work item's name: its file, row group and first row inside the row group."""
    return f'{int(file_index)}-{int(row_group)}-{int(start)}'


class WorkClaims:
    """Claims in ``root`` (a folder shared by the driver and the actors of one job)."""

    def __init__(self, root: str):
        self.root = root

    @classmethod
    def create(cls) -> 'WorkClaims':
        return cls(tempfile.mkdtemp(prefix='numclip-claims-'))

    def claim(self, key: str, owner: str) -> bool:
        """True when ``owner`` may score item ``key``: it claimed it now, or its side claimed it before."""
        if owner not in (DRIVER, POOL):
            raise ValueError(f'owner must be {DRIVER!r} or {POOL!r}, got {owner!r}')
        note = os.path.join(self.root, f'.{owner}-{uuid.uuid4().hex}')
        with open(note, 'w') as f:
            f.write(owner)
        try:
            os.link(note, os.path.join(self.root, key))
            return True
        except FileExistsError:
            return self.owner(key) == owner
        finally:
            os.unlink(note)

    def owner(self, key: str):
        """Who claimed ``key`` (None: nobody yet)."""
        try:
            with open(os.path.join(self.root, key)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
