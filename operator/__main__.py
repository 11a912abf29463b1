"""Run the operator: ``python -m therapy_rlhf.operator [--namespace NS ...] [--liveness URL]``.

The one place the handlers are registered (into kopf's default registry),
with the options the Helm chart uses. Settings not on the command line come
from the environment (``THERAPY_RLHF_INTERVAL``, ``THERAPY_RLHF_METRICS_PORT``,
...; see ``config``), read when ``main`` runs, never at import.
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from therapy_rlhf.operator.config import OperatorConfig
from therapy_rlhf.operator.handlers import register


class QuietTimers(logging.Filter):
    """Drop kopf's "Timer ... succeeded." line: one per run per tick says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno == logging.INFO and message.startswith("Timer ") and message.endswith(" succeeded."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m therapy_rlhf.operator", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--namespace", action="append", default=[], help="Watch this namespace (repeatable).")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace (cluster-wide RBAC).")
    parser.add_argument("--liveness", default=None, help="Liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
    parser.add_argument("--peering", default=None, help="kopf peering object name (several replicas); default standalone.")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("give --namespace NS (repeatable) or --all-namespaces")
    register(kopf.get_default_registry(), OperatorConfig.from_env())
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietTimers())
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
