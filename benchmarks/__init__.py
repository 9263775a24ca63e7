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
- latency (``_latency.py``): produce -> handler start (each body carries its send time), at
  each of ``--latency-rates`` (default 1k, 10k and 50k msg/s) in turn: every millisecond the
  producer sends the messages due so far in one ``enqueue_many`` / ``append_many`` /
  ``publish_many`` call, and reports the rate it reached; p50/p99/max per rate, the main table
  showing the lowest rate's;
- peak RSS (``VmHWM``) of the app process while it drains a 1M backlog;
- CPU time per consumed message, which noisy neighbours barely move, unlike msg/s;
- webapp (``_webapp.py``): 1,000 coroutines each making one ``enqueue`` (or ``append``) per
  message with a default App (its bounded producing pool) against redis-py LPUSH (XADD) over a
  ``BlockingConnectionPool`` of the same size;
- scaling (``_scaling.py``): ``python -m aioredq --workers 1`` against ``--workers 2`` (real
  processes, the command line) draining a task backlog then a stream backlog, and one worker
  draining six task queues on a local Redis Cluster (``_cluster.py``) of 1 against 3 masters;
  on a machine with few cores these ratios show contention, not scaling;
- the price of each job feature (``--features``, table in ``_features.py``): the model with
  the feature on against the plain aioredq run, same run, under the first event loop.

Every measurement runs in a fresh process (``_child.py``); medians of the repetitions (3, or 1
with ``--quick``, whose sizes are tiny: a smoke run) are printed with their spread, and
``--json PATH`` writes every number, including how many times the server ran each command
during each consume run.
"""
