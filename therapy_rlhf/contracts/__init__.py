"""Contracts: what every part of the project agrees on, with no behaviour behind it.

Owns the run spec and its CRD (``spec``, ``crd``), the status the operator
writes (``status``), the phase / condition / reason names (``phases``), the
table of job kinds (``jobkinds``), the records kept in the store (``records``),
the store layout (``layout``), validated names (``names``), safe YAML reading
(``safe_yaml``), quantities (``quantity``) and what each rubric level means
(``rubric_levels``).

May import: the standard library, pydantic, pyyaml. Nothing else of the
project: every other package imports this one.
"""
