"""`deepfeed audit`: query the audit ledger and verify its hash chain.

    deepfeed audit query --record-id 3f2a... --stage clean_corpus --action dropped
    deepfeed audit verify [--anchor <entry_hash>]

`verify` exits 1 when the chain is broken (an entry edited, removed, inserted or moved),
so it can guard a CI job or a cron entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FILTERS = ("record_id", "stage", "action", "run_id")


def default_ledger() -> Path:
    from deepfeed.core.offline import deepfeed_home

    return deepfeed_home() / "audit" / "ledger.jsonl"


def _ledger(args: argparse.Namespace):
    from deepfeed.core.audit import AuditLedger

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
            print(f"{entry['seq']:>7}  {entry['ts'][:19]}  {entry['stage']:<14} {entry['action']:<12} "
                  f"{entry['record_id']:<20} run {entry['run_id'][:8]}  {entry['reason']}")
        shown += 1
    if not args.json:
        print(f"{shown} entr{'y' if shown == 1 else 'ies'}" + (f" matching {wanted}" if wanted else "") + f" in {ledger.path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    result = ledger.verify(anchor=args.anchor)
    if result.ok:
        print(f"ledger OK: {result.n_entries} entries, head {result.last_hash} ({ledger.path})")
        return 0
    print(f"ledger TAMPERED: line {result.first_bad_line}: {result.reason}; "
          f"{result.n_entries} entries verified before it ({ledger.path})", file=sys.stderr)
    return 1


def add_audit_parser(commands) -> None:
    audit = commands.add_parser("audit", help="query the audit ledger and verify its hash chain")
    audit.add_argument("--ledger", default="", help="ledger file (default $DEEPFEED_HOME/audit/ledger.jsonl)")
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
    verify.add_argument("--anchor", default=None, help="an entry_hash recorded earlier (e.g. clean_corpus's audit_head): catches entries cut off the end")
    verify.set_defaults(func=cmd_verify)
