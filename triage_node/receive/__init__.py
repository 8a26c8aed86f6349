"""The receive stage: pynetdicom SCP, association policy, checks, eligibility and spool.

``start_receiver(settings, store)`` is the stage's one entry point.
"""

from triage_node.receive.scp import ReceiverHandle, start_receiver

__all__ = ["ReceiverHandle", "start_receiver"]
