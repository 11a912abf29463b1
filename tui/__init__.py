"""The psychologist's scoring app (Textual): ``therapy-rlhf score``.

``launch()`` is what the local runner calls at a gate. Textual is imported
only when the app starts, so importing this package stays cheap; the app
never imports torch or the Kubernetes client.
"""

from __future__ import annotations

import os
import sys

from therapy_rlhf.contracts import names

RATER_ENV = "THERAPY_RLHF_RATER"


def resolve_rater(rater: str | None) -> str:
    """--rater, else $THERAPY_RLHF_RATER (said on stderr, so the id in use is visible); validated (InvalidName).

    The login name is never used: scores stored under a wrong id count for another
    rater (or for nobody), so with neither given this is a one-line error."""
    source = "--rater"
    if not rater:
        rater, source = os.environ.get(RATER_ENV), f"${RATER_ENV}"
        if not rater:
            raise names.InvalidName(
                f"no rater id: pass --rater ID (your id in the run's feedback.raters) or set ${RATER_ENV}"
            )
    try:
        rater = names.rater_id(rater)
    except names.InvalidName as err:
        raise names.InvalidName(f"{err} (from {source}; pass --rater ID)") from None
    if source != "--rater":
        print(f"rater id: {rater} (from {source})", file=sys.stderr)
    return rater


def launch(
    store_uri: str,
    rater: str | None = None,
    run: tuple[str, str] | None = None,
    round_no: int | None = None,
) -> int:
    """Run the scoring app in this terminal; returns when the rater quits (0), 2 on bad input."""
    from therapy_rlhf.store.backends import open_store

    try:
        rater_id = resolve_rater(rater)
        store = open_store(store_uri)
        if run is not None:
            names.namespace(run[0])
            names.run_name(run[1])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from therapy_rlhf.tui.app import ScoringApp

    result = ScoringApp(store, rater_id, run, round_no).run()
    return int(result or 0)


__all__ = ["launch", "resolve_rater", "RATER_ENV"]
