"""Batch scoring of image catalogs (Parquet) with a trained NumCLIP model on Ray Data.

``python -m batch.score --help`` is the command line; :func:`batch.pipeline.score_catalog` the Python entry point.
This package depends on ``numclip_mm.inference`` only (never on training code or ``tools/``).
"""
