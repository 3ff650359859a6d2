"""The scorer as a file, for `ray submit batch/cluster.yaml batch/score.py -- ...` (the cluster launcher copies a
script, not a module). The code is :mod:`numclip_mm.batch.score` (also `numclip-score`, `python -m
numclip_mm.batch.score`); this file only runs it, so numclip-mm must be installed where it runs (every node of
batch/cluster.yaml is set up that way; in a checkout, `make setup` or `pip install -e .`)."""

from numclip_mm.batch.score import cli

if __name__ == '__main__':
    cli()
