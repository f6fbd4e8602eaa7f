"""`deepfeed audit`: query the audit ledger and verify its hash chain.

    deepfeed audit query --record-id 3f2a... --stage clean_corpus --action dropped
    deepfeed audit verify [--anchor <entry_hash>]
    deepfeed audit recover
    deepfeed audit rekey [--anchor <entry_hash>]

`verify` exits 1 when the chain or its MACs are broken (an entry edited, removed, inserted
or moved, even with the hashes recomputed), when the tail was cut off (head anchor), when a
published artifact's audit entries are missing, or when the ledger is unkeyed (it says how to
re-key); 2 when no audit key is configured to check it with. So it can guard a CI job or a
cron entry. `recover` appends the entries of a publication a crash interrupted; `rekey`
adds MACs to a ledger written before they existed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FILTERS = ("record_id", "stage", "action", "run_id")


def default_ledger() -> Path:
    from deepfeed.core.platform.locations import Locations

    return Locations.from_environment().audit_ledger


def _ledger(args: argparse.Namespace):
    from deepfeed.core.platform.audit import AuditLedger

    return AuditLedger(Path(args.ledger) if args.ledger else default_ledger())


def cmd_query(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    if not ledger.path.exists():
        print(f"deepfeed audit: no ledger at {ledger.path}", file=sys.stderr)
        return 2
    wanted = {name: getattr(args, name) for name in FILTERS if getattr(args, name)}
    shown = 0
    for entry in ledger.iter_entries(**wanted, since=args.since, until=args.until):
        if args.limit and shown >= args.limit:
            break
        if args.json:
            print(json.dumps(entry, ensure_ascii=False, sort_keys=True))
        else:
            print(
                f"{entry['seq']:>7}  {entry['ts'][:19]}  {entry['stage']:<14} {entry['action']:<12} "
                f"{entry['record_id']:<20} run {entry['run_id'][:8]}  {entry['reason']}"
            )
        shown += 1
    if not args.json:
        print(
            f"{shown} entr{'y' if shown == 1 else 'ies'}"
            + (f" matching {wanted}" if wanted else "")
            + f" in {ledger.path}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    result = ledger.verify(anchor=args.anchor)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.ok:
        print(f"ledger OK: {result.n_entries} entries, head {result.last_hash} ({ledger.path})")
        return 0
    if result.status == "no_key":
        print(f"ledger NOT VERIFIED: {result.reason} ({ledger.path})", file=sys.stderr)
        return 2
    if result.status == "unkeyed":
        print(f"ledger UNKEYED: {result.reason} ({ledger.path})", file=sys.stderr)
        return 1
    where = f"line {result.first_bad_line}: " if result.first_bad_line else ""
    print(
        f"ledger TAMPERED: {where}{result.reason}; {result.n_entries} entries verified before it ({ledger.path})",
        file=sys.stderr,
    )
    return 1


def cmd_recover(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    done = ledger.recover()
    for line in done:
        print(line)
    print(f"{len(done)} interrupted publication(s) closed ({ledger.path})")
    return 0


def cmd_rekey(args: argparse.Namespace) -> int:
    from deepfeed.core.platform.audit import LedgerCorrupted

    ledger = _ledger(args)
    if not ledger.path.exists():
        print(f"deepfeed audit: no ledger at {ledger.path}", file=sys.stderr)
        return 2
    try:
        n = ledger.rekey(anchor=args.anchor)
    except (LedgerCorrupted, ValueError) as exc:
        print(f"deepfeed audit rekey: {exc}", file=sys.stderr)
        return 1
    print(f"re-keyed {n} entries; head anchor written to {ledger.head_path}")
    return 0


def add_audit_parser(commands) -> None:
    audit = commands.add_parser("audit", help="query the audit ledger, verify its keyed chain, recover, re-key")
    audit.add_argument("--ledger", default="", help="ledger file (default: the audit ledger of $DEEPFEED_HOME)")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    query = actions.add_parser("query", help="entries matching every filter given, in order")
    query.add_argument("--record-id", dest="record_id")
    query.add_argument("--stage", help="e.g. raw_corpus, clean_corpus, champion_model")
    query.add_argument("--action", help="e.g. dropped, modified, quarantined, anonymized, generalized")
    query.add_argument("--run-id", dest="run_id", help="the Dagster run id")
    query.add_argument("--since", help="ISO 8601 UTC time, inclusive")
    query.add_argument("--until", help="ISO 8601 UTC time, exclusive")
    query.add_argument("--limit", type=int, default=0, help="show at most this many entries (0: all)")
    query.add_argument("--json", action="store_true", help="one JSON entry per line")
    query.set_defaults(func=cmd_query)
    verify = actions.add_parser("verify", help="re-derive the hash chain; exit 1 if it was tampered with")
    verify.add_argument(
        "--anchor",
        default=None,
        help="an entry_hash recorded earlier (e.g. clean_corpus's audit_head): catches entries cut off the end",
    )
    verify.set_defaults(func=cmd_verify)
    recover = actions.add_parser(
        "recover",
        help="append the audit entries of artifact versions published by a run that crashed before writing them",
    )
    recover.set_defaults(func=cmd_recover)
    rekey = actions.add_parser("rekey", help="add MACs (audit key) to a ledger written before entries carried them")
    rekey.add_argument(
        "--anchor", default=None, help="an entry_hash recorded earlier; refuse if it is not in the chain"
    )
    rekey.set_defaults(func=cmd_rekey)
