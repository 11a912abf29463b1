"""therapy-rlhf rater-key: a rater's signing key, on the rater's own machine.

    therapy-rlhf rater-key init --rater dr-lee     # creates the key, prints its public key
    therapy-rlhf rater-key show --rater dr-lee     # prints the public key again

The private key lives in the user data folder (``$XDG_DATA_HOME/therapy-rlhf/keys/<id>.pem``,
0600) and never goes to the store. The printed line is what the platform team registers in
the run's spec: ``feedback.raters: [{id: dr-lee, publicKey: "ed25519:..."}]``.
"""

from __future__ import annotations

import argparse
import sys

from therapy_rlhf.commands._target import one_line

NAME = "rater-key"
HELP = "Create (init) or print (show) your rating signing key's public half; the private key stays on this machine."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["init", "show"], help="init: create the key (never replaces one); show: print it.")
    parser.add_argument("--rater", required=True, metavar="ID", help="Your rater id.")


def run(args: argparse.Namespace) -> int:
    from therapy_rlhf.contracts.names import InvalidName
    from therapy_rlhf.contracts.signing import public_key_text
    from therapy_rlhf.feedback import rater_keys

    try:
        if args.action == "init":
            public = rater_keys.init_key(args.rater)
            print(f"created {rater_keys.key_path(args.rater)} (keep it private; it never leaves this machine)", file=sys.stderr)
        else:
            key = rater_keys.load_key(args.rater)
            if key is None:
                print(f"{rater_keys.key_path(args.rater)} does not exist: run `therapy-rlhf rater-key init --rater {args.rater}`",
                      file=sys.stderr)
                return 1
            public = public_key_text(key)
    except (InvalidName, rater_keys.RaterKeyError, OSError) as err:
        print(one_line(err), file=sys.stderr)
        return 1
    print(public)
    print(f"register it for a run as: feedback.raters: [{{id: {args.rater}, publicKey: \"{public}\"}}]", file=sys.stderr)
    return 0
