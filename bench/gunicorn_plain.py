"""An empty gunicorn config: `bench.ingest --gunicorn-config none` runs on gunicorn's defaults (no access log).

Passed as `-c python:bench.gunicorn_plain`, so the project's ./gunicorn.conf.py is not picked up either.
"""
