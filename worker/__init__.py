"""The worker: runs the jobs the API accepts with core's trainer, and never loses one.

- ``celery_app``: queues ``training`` and ``default``, settings for hours-long GPU jobs.
- ``tasks``: the thin Celery task (a job id in, ``runner.run_job`` called).
- ``runner``: claim, fetch inputs into the ``cache``, train with the ``reporter``, finalise.
- ``lease``: the compare-and-set claim's fencing token and the heartbeat that renews it.
- ``reporter`` / ``uploads``: throttled progress and events, artifact uploads off the training thread.
- ``reconciler`` / ``maintenance``: outbox dispatch, re-enqueueing what the broker lost or a dead
  worker left behind, webhook sending.
- ``process`` / ``supervisor`` / ``local``: ``hyperforge worker`` and ``hyperforge local``.
- ``client`` / ``demo`` / ``cli``: the HTTP client, ``hyperforge demo`` and ``hyperforge jobs``.

The database is the source of truth for every job; the broker only carries wake-up calls.
"""
