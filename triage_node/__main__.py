"""`python -m triage_node` is the `triage-node` command."""

import sys

from triage_node.commands.main import main

sys.exit(main())
