"""`triage-node resend (STUDY_UID... | --failed)`: deliver a study's results again.

``resend STUDY_UID...`` puts the deliver job of the study's newest report
version back in the queue for every configured destination, whatever it did
before (failed, or delivered and the archive lost it): every object is sent
again, with the same SOP Instance UIDs, so an archive keeps one copy.
``resend --failed`` requeues every failed delivery (only the objects not yet
delivered are sent). A running node picks the jobs up at its next poll. Each
action is printed on one line; an unknown Study Instance UID exits 2 without
changing anything.
"""

from __future__ import annotations

import argparse

from triage_node.commands.common import EXIT_OK, EXIT_USAGE, error
from triage_node.config import load_settings
from triage_node.store.existing import open_existing_store
from triage_node.work.resend import UnknownStudies, resend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``resend (STUDY_UID... | --failed)``: exactly one of the two."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "study_uids",
        nargs="*",
        default=(),  # not None: argparse then counts an empty STUDY_UID list as not given
        metavar="STUDY_UID",
        help="Study Instance UID(s) whose results are sent again",
    )
    which.add_argument(
        "--failed", action="store_true", help="requeue every failed delivery instead"
    )
    parser.usage = "%(prog)s [-h] [--config PATH] (STUDY_UID [STUDY_UID ...] | --failed)"
    parser.epilog = "Exit 2 for an unknown Study Instance UID (nothing is changed then)."


def main(args: argparse.Namespace) -> int:
    """Resend in one transaction, print what was done."""
    settings = load_settings(args.config)
    store = open_existing_store(settings)
    if store is None:
        if args.failed:
            print("no failed deliveries (the node has no database yet)")
            return EXIT_OK
        message = f"unknown study: {', '.join(args.study_uids)} (no database yet)"
        return error(args.command, message, EXIT_USAGE)
    try:
        with store.write() as session:
            lines = resend(settings, session, None if args.failed else list(args.study_uids))
    except UnknownStudies as exc:
        return error(args.command, f"unknown study: {exc} (nothing changed)", EXIT_USAGE)
    finally:
        store.dispose()
    for line in lines:
        print(line)
    return EXIT_OK
