"""The TherapyRLHFRun operator (kopf): ``python -m therapy_rlhf.operator``.

Importing this package, or any module in it, has no side effect: nothing is
registered with kopf and the environment is not read. The entrypoint
(``__main__``) registers the handlers (``handlers.register``) into kopf's
default registry with settings from the environment (``config``); tests
register into their own registry with their own settings.

May import: the core (``therapy_rlhf.contracts``, ``store``, ``planning``,
``feedback``, ``execution``), kopf, kubernetes, prometheus-client; never torch,
Textual or the jobs.
"""
