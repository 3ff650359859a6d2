"""Batch scoring of image catalogs (Parquet, local or on object stores) with a trained NumCLIP model, on Ray Data or,
on a small machine alone, in threads of the driver.

``numclip-score --help`` (or ``python -m numclip_mm.batch.score``, ``python batch/score.py``) is the command line;
:func:`numclip_mm.batch.pipeline.score_catalog` the Python entry point. One concern per module: ``columns``
(names, types, cell CRCs), ``catalog`` (the only module touching files and URIs), ``decode``, ``actor``,
``engine`` (in-process or Ray), ``in_process`` (the driver's scoring threads), ``collection`` (prediction rows in,
checked writes out), ``writers`` (Ray tasks on a cluster, driver threads on this machine), ``pipeline`` (the Ray
graph and the driver), ``score`` (command line). This package depends on
``numclip_mm.inference`` only (never on training code or ``tools/``), and on the light :mod:`numclip_mm.shared`
for what both sides use.
"""
