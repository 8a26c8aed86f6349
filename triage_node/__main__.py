"""``python -m triage_node`` is the ``triage-node`` command (``triage_node.commands.main``)."""

import sys

from triage_node.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
