"""Planning: what happens next in a run, and what each job needs.

Owns the job-kind table (``jobkinds``), the phase / condition / reason names
(``phases``), the pure planner (``planner``: spec + observed store -> one
decision), what the planner observes in the store (``observe``), model shapes
and the per-job GPU memory plan (``model_shapes``, ``memory_plan``).

May import: the standard library, ``therapy_rlhf.contracts`` and
``therapy_rlhf.store.backends``/``therapy_rlhf.feedback`` (observe reads rounds);
``jobkinds`` and ``phases`` import nothing but the standard library.
Never: the executors (``therapy_rlhf.execution``, the operator), the jobs, the TUI.
"""
