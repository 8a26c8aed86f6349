"""The web console: worklist, study, status and trends pages, served by the node itself.

:class:`~triage_node.web.app.Console` answers requests; :mod:`triage_node.web.server`
puts it on the metrics endpoint or on ``[web] port``. It shows what ``worklist``
and ``status`` show, from the same read-only views, and its one action is
``resend`` (an administrator's, with a CSRF token).
"""
