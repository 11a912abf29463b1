"""Local execution: the runner that carries a run out on this machine, one job at a time.

Owns the local runner (``runner``; ``workdir``: where it keeps a run's files, how it starts jobs), the executor step both executors share
(``step``: closing a gate, outcome and drift messages, the digest record,
the suspend rule), and the job worker (``worker_server``: the process that
forks jobs warm; ``worker_client``: the runner's handle on it;
``worker_protocol``: what they say to each other).

May import: ``therapy_rlhf.contracts``, ``store``, ``feedback``, ``planning``.
Never: the CLI, the operator, the jobs, the TUI (the CLI wires the TUI in).
"""
