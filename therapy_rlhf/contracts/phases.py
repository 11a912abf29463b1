"""Named phases, condition types and reasons shared by the planner, the
operator's status and the local runner's progress output."""

from __future__ import annotations

# Phases (status.phase) -----------------------------------------------------
PENDING = "Pending"
SFT = "SFT"
GENERATING = "Generating"
AWAITING_RATINGS = "AwaitingRatings"
UPDATING = "Updating"
EVALUATING = "Evaluating"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"

PHASES = (PENDING, SFT, GENERATING, AWAITING_RATINGS, UPDATING, EVALUATING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL_PHASES = (SUCCEEDED, FAILED)

# The phase a running job of each kind puts the run in: jobkinds.PHASE_OF_JOB.

# Condition types (status.conditions[].type) ---------------------------------
COND_READY = "Ready"
COND_AWAITING_RATINGS = "AwaitingRatings"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
CONDITION_TYPES = (COND_READY, COND_AWAITING_RATINGS, COND_FAILED, COND_SUSPENDED)

# Reasons (conditions[].reason, Event reasons) --------------------------------
R_JOB_STARTED = "JobStarted"
R_JOB_RUNNING = "JobRunning"
R_JOB_RETRYING = "JobRetrying"
R_JOB_FAILED = "JobFailed"
R_JOB_OUTPUT_MISSING = "JobOutputMissing"
R_WAITING_FOR_RATINGS = "WaitingForRatings"
R_GATE_CLOSED = "GateClosed"
R_GATE_OVERRIDDEN = "GateOverridden"
R_GATE_DEADLINE_EXCEEDED = "GateDeadlineExceeded"
R_SUSPENDED = "SuspendedBySpec"
R_SUCCEEDED = "RunSucceeded"
R_INVALID_SPEC = "InvalidSpec"
R_STORE_UNAVAILABLE = "StoreUnavailable"
R_SECRET_MISSING = "SecretMissing"
R_FORBIDDEN = "Forbidden"
R_KUBE_API_ERROR = "KubernetesApiError"  # any other error of the Kubernetes API (retried every tick)
# Integrity and admission (issue 10): Warning Events, and the Ready condition of a blocked run.
R_GATE_REPLACED = "GateReplaced"  # a gate.json the executor had not closed was replaced
R_RUN_CONFIG_RESTORED = "RunConfigRestored"  # an edited run ConfigMap was put back
R_NOT_ALLOWED = "NotAllowed"  # a Secret, image or service account the installation does not allow
# feedback.selection (issues 12, 21): the reward model's skill on a round's fresh expert ratings is no better
# than their mean (bootstrap lower bound <= 0), so the next round falls back (feedback.selection.fallback) and
# the model decides nothing until a later gate finds skill again (a Warning Event; the reason of
# Ready/AwaitingRatings while a fallback round waits).
R_REWARD_MODEL_DRIFT = "RewardModelDrift"
# ... and a later gate found skill again: selection resumes (a Normal Event; the reason while it waits).
R_REWARD_MODEL_RECOVERED = "RewardModelRecovered"
# Why a round's selection is what it is (Selection.decision, status.rounds[].selectionDecision), besides the two above:
R_SELECTION_COLD_START = "ColdStart"  # fewer than minRatings expert ratings: uniform, the model is not fitted
R_SELECTION_PROBATION = "ModelOnProbation"  # fitted but never judged: uniform picks (the held-out set it is judged on)
R_SELECTION_SKILLED = "ModelSkilled"  # the last judged round found skill: the requested mode
# More safety-flagged responses in a batch than feedback.selection.safetyCap: crises dominate it (a Warning Event;
# they all still go to the experts, outside the budget).
R_SAFETY_CAP_EXCEEDED = "SafetyCapExceeded"
# ppo.stopping (issue 21): the reward's rise over the last rounds is inside its noise (a Warning Event; with
# mode 'ask' the run is suspended with this reason, with mode 'stop' it ends after that round's update).
R_REWARD_PLATEAU = "RewardPlateau"
# One executor per run (issue 20): a live local runner holds the run's lease in the store, so the
# operator starts nothing (the Ready condition's reason and a Warning Event, naming the runner).
R_HELD_BY_LOCAL_RUNNER = "HeldByLocalRunner"

# spec.fluency (issue 17): a batch below a fluency threshold pauses the run before anyone rates it
# (phase Suspended, the Suspended condition's reason).
R_FLUENCY_COLLAPSE = "FluencyCollapse"
