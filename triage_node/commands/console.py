"""`triage-node console [--open] [--hash-password]`: where the web console is, or a password hash.

Prints the console's URL from the config (the metrics endpoint, or ``[web]
host:port`` when the console has its own port); ``--open`` also opens it in
this machine's browser. ``--hash-password`` reads a password (asked twice on a
terminal, else one line of standard input) and prints the ``[[web.users]]``
entry that holds its scrypt hash; the password itself is never written anywhere.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import webbrowser

from triage_node.commands.common import EXIT_OK, EXIT_USAGE, error
from triage_node.config import Settings, load_settings
from triage_node.web.auth import hash_password


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``console [--open] [--hash-password [--user NAME] [--role ROLE]]``."""
    parser.add_argument("--open", action="store_true", help="open the console in a browser")
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password and print a [[web.users]] entry with its hash",
    )
    parser.add_argument("--user", default="admin", help="the entry's name (default: admin)")
    parser.add_argument(
        "--role", choices=("viewer", "admin"), default="admin", help="the entry's role"
    )


def console_url(settings: Settings) -> str | None:
    """The console's address as a browser on this machine reaches it; None when it is off."""
    web = settings.web
    if not web.enabled:
        return None
    if web.port is None:
        host, port, scheme = settings.metrics.host, settings.metrics.port, "http"
    else:
        host, port, scheme = web.host, web.port, "https" if web.tls else "http"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            return None
        return first
    return sys.stdin.readline().rstrip("\n")


def main(args: argparse.Namespace) -> int:
    if args.hash_password:
        password = _read_password()
        if not password:
            return error(args.command, "no password, or the two did not match", EXIT_USAGE)
        print("[[web.users]]")
        print(f'name = "{args.user}"')
        print(f'password_hash = "{hash_password(password)}"')
        print(f'role = "{args.role}"')
        return EXIT_OK
    settings = load_settings(args.config)
    url = console_url(settings)
    if url is None:
        return error(args.command, f"the console is off (web.enabled = false in {settings.source})")
    print(url)
    if args.open and not webbrowser.open(url):
        return error(args.command, f"no browser to open here; open {url} yourself")
    return EXIT_OK
