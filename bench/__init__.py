"""Hand-run benchmarks, each printing a baseline measured in the same run and the ratio to it.

    .venv/bin/python -m bench.ingest      # web: signed 100-event batches vs. minimal and bare Flask apps
    .venv/bin/python -m bench.processing  # worker: events/s vs. RQ's own no-op job rate
    .venv/bin/python -m bench.memory      # Redis bytes per tracked lead at 100k leads
    .venv/bin/python -m bench.run_all     # all three, in about two minutes

They use the real Redis on 127.0.0.1:6379 (or PRUNER_TEST_REDIS host:port), database 13 only (flushed before and after).
"""
