"""Background jobs: registry on the server loop, job model, stores.

The public surface for writing a job kind of your own (registered with the
gateway file's ``[app] job_kinds``, or ``register_job_kind`` in ``app.py``)::

    from fanout.jobs import InvalidParams, JobContext, JobKind, StoredResponse

A ``JobKind`` has a ``name`` (``POST /jobs/<name>`` starts one) and a
``prepare(params)`` that checks the JSON parameters (raising ``InvalidParams``,
answered with 400) and returns the job's body: an ``async def run(context:
JobContext) -> StoredResponse``. ``context.progress(done, total, message)``
reports progress; the ``StoredResponse`` is replayed by ``/jobs/<id>/result``.
"""

from fanout.jobs.kinds import InvalidParams, JobKind
from fanout.jobs.model import StoredResponse
from fanout.jobs.registry import JobBody, JobContext

__all__ = ["InvalidParams", "JobBody", "JobContext", "JobKind", "StoredResponse"]
