"""``appliance catalog init | add | sign | rotate-key``: a site's signed model mirror.

A site that serves models to its devices keeps them in a folder (``SITE``) that
any web server can serve, signed with The Update Framework (:mod:`appliance.trust`):

1. ``init SITE --keys KEYS --root-keys ROOTKEYS``: new keys (root apart from the
   online ones) and version 1 of all metadata; put ``SITE/metadata/1.root.json``
   on every device as ``/etc/appliance/root.json``.
2. ``add SITE NAME FILE --kind llm --keys KEYS``: the file and its catalog entry.
3. ``sign SITE --keys KEYS``: fresh versions and expiry dates (daily, from cron:
   the timestamp lives 7 days).
4. ``rotate-key SITE --keys KEYS --root-keys ROOTKEYS [--role root]``: a new key;
   a new root version signed by the old and the new root key, which devices follow.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import TrustError
from appliance.trust import ONLINE_ROLES, ROLES

if TYPE_CHECKING:  # python-tuf and cryptography load only when a catalog command runs
    from appliance.trust.repository import SiteRepository


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``catalog`` command group."""
    p = sub.add_parser("catalog", help="make and sign a site's model mirror (TUF)")
    cmds = p.add_subparsers(dest="catalog_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, help_: str, *, root_keys: bool) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help_)
        c.add_argument("site", type=Path, help="the mirror folder (served as it is)")
        c.add_argument("--keys", type=Path, required=True, metavar="DIR",
                       help="the online keys: targets, snapshot, timestamp")
        if root_keys:
            c.add_argument("--root-keys", type=Path, required=True, metavar="DIR",
                           help="the root key, kept apart (offline)")
        return c

    command("init", "a new signed mirror and its keys", root_keys=True).set_defaults(
        handler=run_init)
    add = command("add", "publish a model file and its catalog entry", root_keys=False)
    add.add_argument("name", help="the model's catalog name")
    add.add_argument("file", type=Path, help="the file (a .zip for a vosk model)")
    add.add_argument("--kind", choices=("llm", "vosk", "piper"), required=True)
    add.add_argument("--license", default=None)
    add.add_argument("--chat-format", default=None)
    add.add_argument("--n-ctx", type=int, default=None)
    add.add_argument("--notes", default=None)
    add.set_defaults(handler=run_add)
    command("sign", "new versions with fresh expiry dates (run daily)",
            root_keys=False).set_defaults(handler=run_sign)
    rotate = command("rotate-key", "replace a role's key (root by default)", root_keys=True)
    rotate.add_argument("--role", choices=ROLES, default="root")
    rotate.set_defaults(handler=run_rotate)


def _online(site: Path, keys_dir: Path) -> SiteRepository:
    """The mirror with its online signers, each checked against the keys its root trusts."""
    from appliance.trust import keys
    from appliance.trust.repository import SiteRepository

    signers = {role: [keys.load(keys_dir, role)] for role in ONLINE_ROLES}
    repo = SiteRepository(site, signers)
    root = repo.root()
    for role, (signer, *_) in signers.items():
        if signer.public_key.keyid not in root.roles[role].keyids:
            raise TrustError(f"{keys.key_path(keys_dir, role)}: not the key the mirror's root "
                             f"trusts for {role}")
    return repo


def run_init(args: argparse.Namespace) -> int:
    """Make the keys and version 1 of every role."""
    from appliance.trust import keys
    from appliance.trust.repository import SiteRepository

    for role in ROLES:
        folder = args.root_keys if role == "root" else args.keys
        if keys.key_path(folder, role).exists():
            raise TrustError(f"{keys.key_path(folder, role)}: a key is already there; "
                             "not overwriting it")
    signers = {role: keys.generate(args.root_keys if role == "root" else args.keys, role)
               for role in ROLES}
    SiteRepository.create(args.site, signers)
    print(f"signed mirror in {args.site}; keep {args.root_keys} offline")
    print(f"on every device: {args.site / 'metadata' / '1.root.json'} -> "
          "/etc/appliance/root.json, and models.mirror: <the URL serving "
          f"{args.site}>")
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Publish one model."""
    from appliance.trust.site_catalog import add_model

    repo = _online(args.site, args.keys)
    extra = {"license": args.license, "chat_format": args.chat_format, "n_ctx": args.n_ctx,
             "notes": args.notes}
    entry = add_model(repo, args.name, args.file, args.kind, extra)
    print(f"{args.name}: published {entry['target']} ({entry['size']} bytes, sha256 "
          f"{entry['sha256']}); targets v{repo.targets().version}")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """Re-sign the online roles with fresh expiry dates."""
    repo = _online(args.site, args.keys)
    repo.resign()
    timestamp = repo.timestamp()
    print(f"signed: timestamp v{timestamp.version}, expires {timestamp.expires:%Y-%m-%d %H:%M} "
          "UTC")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    """Replace one role's key with a new one; a new root version says so."""
    from appliance.trust import keys

    repo = _online(args.site, args.keys)
    root_key = keys.load(args.root_keys, "root")
    if root_key.public_key.keyid not in repo.root().roles["root"].keyids:
        raise TrustError(f"{keys.key_path(args.root_keys, 'root')}: not a root key of "
                         f"{args.site}")
    folder = args.root_keys if args.role == "root" else args.keys
    staged = keys.generate(folder, f"{args.role}.new")  # kept until the new root is out
    repo.signers["root"] = [root_key, staged] if args.role == "root" else [root_key]
    repo.rotate(args.role, staged)
    os.replace(keys.key_path(folder, f"{args.role}.new"), keys.key_path(folder, args.role))
    print(f"{args.role}: new key {staged.public_key.keyid[:16]}; root v{repo.root().version}"
          f" (devices follow it on their next pull)")
    return 0


