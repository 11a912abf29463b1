"""The store: where a run's objects live, and how what trains the model is verified.

Owns the backends (``backends``: a local directory, S3), the runs the store
holds (``runs``: the frozen spec, the run list), the digests of what only the
executors and the jobs write (``integrity``) and a rater's least-privilege
store policy (``access``), and the run's lease that lets one executor at a
time carry a run out (``lease``).

May import: ``therapy_rlhf.contracts``, boto3. Never: feedback, planning,
execution, the CLI, the operator, the jobs, the TUI.
"""
