"""``phoenix run``, ``phoenix demo`` and ``phoenix bench``: the dataflow side of the CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the classify dataflow as N local processes",
                       description="python -m bytewax.run flows.classify, N processes (-i/-a), with recovery "
                       "so a restarted run resumes where it stopped.")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--recovery", default="recovery", help="recovery directory (default ./recovery); '' disables")
    p.set_defaults(handler=_run)

    p = sub.add_parser("demo", help="the whole system on the local broker, with a live one-line summary",
                       description="Starts the dataflow, NetFlow replay devices and (unless --no-dashboard) the "
                       "dashboard; prints rate, malicious share and p99 latency until Ctrl-C.")
    p.add_argument("--data", nargs="+", default=None, help="NetFlow files to replay (default: the reference "
                   "replay file in ../shared/data/nf)")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--rate", type=float, default=2000.0, help="records/s offered by the devices (default 2000)")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--port", type=int, default=5006, help="dashboard port (default 5006)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("bench", help="measure end-to-end throughput, latency, model-only and reference-style",
                       description="Runs against the local broker on unique exchanges/streams (deleted after).")
    p.add_argument("--records", type=int, default=400_000, help="records for the end-to-end run")
    p.add_argument("--rate", type=float, default=10_000.0, help="offered load for the latency run (records/s)")
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--processes", type=int, default=2, help="dataflow processes (default 2, one per core)")
    p.add_argument("--batch", type=int, default=1000, help="records per device message (default 1000)")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--reference-messages", type=int, default=5000)
    p.add_argument("--data", nargs="+", default=None)
    p.add_argument("--packets", action="store_true", help="also measure pcap replay and the offline meter")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=_bench)


def _run(args: argparse.Namespace) -> int:
    import time

    from flows.cluster import DataflowCluster
    from phoenix.config import Settings

    settings = Settings.from_env()
    recovery = Path(args.recovery) if args.recovery else None
    with DataflowCluster(settings, processes=args.processes, recovery=recovery) as cluster:
        print(f"dataflow: {args.processes} process(es) on {settings.safe_url}; Ctrl-C stops", file=sys.stderr)
        while cluster.alive():
            time.sleep(0.5)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from flows import bench
    from phoenix.cli import emit_json
    from phoenix.config import Settings

    data = args.data or [str(bench.DEFAULT_DATA)]
    result = bench.run(Settings.from_env(), data=data, records=args.records, rate=args.rate,
                       latency_seconds=args.latency_seconds, processes=args.processes, batch=args.batch,
                       devices=args.devices, reference_messages=args.reference_messages)
    if args.packets:
        from capture import bench as packet_bench

        result.update(packet_bench.figures())
    if args.json:
        emit_json(result)
    else:
        print(bench.table_text(result))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flows.demo import demo

    return demo(args)
