"""Manage the JDBC users of ``catalogfs serve`` (the users file, :mod:`catalogfs.server_auth`).

    catalogfs serve-users add NAME --role reader|operator [--password-stdin]
    catalogfs serve-users remove NAME
    catalogfs serve-users list

``add`` reads the password from standard input with ``--password-stdin`` (one line), else asks for
it on the terminal (twice), or, with ``--generate``, makes a random one and prints it once. Never on
the command line, where ``ps`` shows it. Changes apply to the next login; a running server need not
restart. Exit codes: 0 done · 2 bad input (name, role, short password, a users file others can read)
· 3 ``remove``: no such user.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from typing import Sequence

from catalogfs.errors import EXIT_OK, CatalogfsError, ConfigError
from catalogfs.server_auth import ROLES, add_user, read_users, remove_user, users_file
from catalogfs.jobs.job_main import add_common_arguments, parse_and_load

PROG = "catalogfs serve-users"
EXIT_NO_SUCH_USER = 3


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("add", "remove", "list"))
    parser.add_argument("name", nargs="?", help="the user (add, remove)")
    parser.add_argument("--role", choices=ROLES, default="reader", help="add: reader (default) or operator")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="add: read the password from stdin")
    secret.add_argument("--generate", action="store_true", help="add: make a random password and print it once")


def _password(args) -> str:
    if args.generate:
        return secrets.token_urlsafe(18)
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise ConfigError("the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    _arguments(parser)
    parsed = parse_and_load(parser, list(sys.argv[1:] if argv is None else argv), PROG)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    path = users_file(cfg)
    try:
        if args.action == "list":
            for name, (role, _) in read_users(path).items():
                print(f"{name}\t{role}")
            return EXIT_OK
        if not args.name:
            parser.error(f"{args.action} needs a user name")
        if args.action == "remove":
            if not remove_user(path, args.name):
                print(f"{PROG}: no user {args.name!r} in {path}", file=sys.stderr)
                return EXIT_NO_SUCH_USER
            print(f"{PROG}: removed {args.name} from {path}")
            return EXIT_OK
        password = _password(args)
        add_user(path, args.name, args.role, password)
    except CatalogfsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{PROG}: {args.name} ({args.role}) in {path}" + (f"; password: {password}" if args.generate else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
