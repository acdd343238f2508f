"""``appliance console password``: set or reset the console's password.

Prompts twice (or reads one line from stdin with ``--stdin``, for install.sh
and scripts) and writes its Argon2id hash to ``api.web.password_file`` or
``<data_dir>/console/password`` (:mod:`appliance.console.password`). A running
service notices the new file within a second and ends every console session.
The same password again leaves the file as it is (install.sh may run twice).
"""

from __future__ import annotations

import argparse
import getpass
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``console`` command group."""
    p = sub.add_parser("console", help="the device's own web console")
    cmds = p.add_subparsers(dest="console_command", required=True, metavar="SUBCOMMAND")
    password = cmds.add_parser("password", help="set or reset the console's password")
    password.add_argument("--stdin", action="store_true",
                          help="read the password from one line of standard input "
                               "instead of prompting twice")
    password.set_defaults(handler=run_password)


def run_password(args: argparse.Namespace) -> int:
    """Set the password; a too-short one or a config problem exits 2 with one line."""
    from appliance.cli import load
    from appliance.console.password import (  # argon2 loads only for this command
        PasswordError,
        check_new,
        hash_password,
        matches,
        password_path,
        read_hash,
        write_hash,
    )

    settings = load(args)
    path = password_path(settings.api.web, settings.data_dir)
    password = _from_stdin() if args.stdin else _prompted()
    check_new(password)
    try:
        current = read_hash(path)
    except PasswordError:
        current = None  # an unusable file: replacing it is what this command is for
    if current is not None and matches(current, password):
        print(f"console password unchanged: {path}")
        return 0
    write_hash(path, hash_password(password))
    print(f"console password set: {path}")
    if settings.api.web is None:
        print(f"note: api.web is off in {settings.source}: the console uses this password "
              "once it is on", file=sys.stderr)
    return 0


def _from_stdin() -> str:
    from appliance.console.password import MAX_LENGTH

    line = sys.stdin.readline(MAX_LENGTH + 2)
    return line.removesuffix("\n").removesuffix("\r")


def _prompted() -> str:
    from appliance.console.password import PasswordError

    try:
        first = getpass.getpass("New console password: ")
        second = getpass.getpass("The same again: ")
    except EOFError:
        raise PasswordError("no password given (use --stdin to pipe one)") from None
    if first != second:
        raise PasswordError("the two passwords differ; nothing was changed")
    return first
