"""aioredq benchmarks: ``python -m benchmarks`` (``make bench``); ``--help`` lists the options.

One command starts its own redis-server (no persistence, on a free port, stopped by its pid)
and, for each model (stream, task, pubsub) and each event loop (asyncio, uvloop), measures
aioredq with its default options and a no-op ``async def`` handler against the fastest honest
raw redis-py loop (``_raw_runs.py``), in the same run:

- consume: drain a pre-filled backlog (200k messages) until the handler has seen every message
  and Redis holds none unacknowledged, timed from the first message handed to the handler;
  pub/sub counts what a subscriber receives from a flat-out publisher in another process;
- produce: ``enqueue_many`` / ``append_many`` / ``publish_many`` against a raw pipeline, both
  starting from the same Python dicts, 100 per call;
- latency: publish -> handler start at 1k msg/s (the producer's clock travels in the body);
- peak RSS (``VmHWM``) of the app process while it drains a 1M backlog;
- CPU time per consumed message, which noisy neighbours barely move, unlike msg/s;
- the price of each job feature (``--features``, table in ``_features.py``): the model with
  the feature on against the plain aioredq run, same run, under the first event loop.

Every measurement runs in a fresh process (``_child.py``); medians of the repetitions are
printed with their spread, and ``--json PATH`` writes every number, including how many times
the server ran each command during each consume run.
"""
