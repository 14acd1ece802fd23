"""Subcommands of ``phoenix`` that belong to the edge: replay, capture, synth, features, scan.

Heavy modules (numpy decoders, torch, scapy, pika) are imported inside the handlers so
``phoenix --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``phoenix`` parser."""
    _register_replay(sub)
    _register_capture(sub)
    _register_synth(sub)
    _register_features(sub)
    _register_scan(sub)
    _register_bench_packets(sub)


# --------------------------------------------------------------------------- replay

def _register_replay(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="simulated devices: replay pcap captures or NetFlow records",
                            description="Replay captures or NetFlow records to the broker as N devices.")
    rsub = replay.add_subparsers(dest="replay_kind", required=True, metavar="KIND")
    _register_replay_pcap(rsub)
    _register_replay_netflow(rsub)


def _register_replay_netflow(rsub: argparse._SubParsersAction) -> None:
    """``phoenix replay netflow``: the lead's NetFlow replay (capture/replay_netflow.py) plugs in here."""
    try:
        from capture import replay_netflow  # noqa: F401
    except ImportError:
        return
    register_netflow = getattr(sys.modules["capture.replay_netflow"], "register", None)
    if register_netflow is not None:
        register_netflow(rsub)


def _register_replay_pcap(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser("pcap", help="replay pcap/pcapng files as N devices publishing packet batches",
                        description="Publish the packets of pcap/pcapng FILEs as N simulated devices "
                        "(packets dealt to devices by flow, so each device sees whole flows). "
                        "Timestamps keep the capture's spacing whatever the speed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--devices", type=int, default=1, help="number of simulated devices (default 1)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0,
                      help="replay speed: capture gaps divided by X; 0 = as fast as possible (default 1)")
    pace.add_argument("--rate", type=float, default=0.0, help="fixed rate in packets/s instead of the capture's timing")
    p.add_argument("--batch", type=int, default=2048, help="max packets per message (default 2048)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many packets")
    p.add_argument("--loop", action="store_true", help="replay again and again (each pass as new flows)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=_replay_pcap)


def _replay_pcap(args: argparse.Namespace) -> int:
    from capture.replay_pcap import replay
    from phoenix.cli import emit_json
    from phoenix.config import Settings

    if args.devices < 1 or args.batch < 1:
        raise SystemExit("--devices and --batch must be ≥ 1")
    out = replay(args.files, devices=args.devices, speed=args.speed if not args.rate else 0.0, rate=args.rate,
                 batch=args.batch, loop=args.loop, limit=args.limit, settings=Settings.from_env())
    if args.json:
        emit_json(out)
    else:
        print(f"replayed {out['packets']:,} packets in {out['messages']:,} messages from {args.devices} devices "
              f"in {out['seconds']} s ({out['packets_per_s']} packets/s)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- capture

def _register_capture(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="live capture agent: sniff an interface, publish packet batches",
                       description="Capture packets on IFACE (needs CAP_NET_RAW), publish them as packet "
                       "batches, report kernel and agent drops.")
    p.add_argument("--iface", required=True, help="interface to capture on, e.g. eth0 or lo")
    p.add_argument("--bpf", default=None, help="BPF capture filter, e.g. 'not port 5672'")
    p.add_argument("--batch", type=int, default=1024, help="max packets per message (default 1024)")
    p.add_argument("--max-wait-ms", type=float, default=50.0, help="publish a partial batch after this long (default 50)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--count", type=int, default=None, help="stop after this many frames")
    p.add_argument("--device-id", default=None, help="device id in the requests (default host:iface)")
    p.add_argument("--no-publish", action="store_true", help="decode and count only (no broker)")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=_capture)


def _capture(args: argparse.Namespace) -> int:
    from capture.live import capture
    from phoenix.cli import emit_json
    from phoenix.config import Settings

    pub = None
    publish = None
    if not args.no_publish:
        from capture.publisher import RequestPublisher

        pub = RequestPublisher(Settings.from_env())
        publish = pub.publish_request
    bpf = args.bpf
    if not args.no_publish and bpf is None:
        bpf = "not port 5672"  # never capture our own broker traffic by default: it would feed itself
    try:
        st = capture(args.iface, bpf=bpf, batch=args.batch, max_wait_s=args.max_wait_ms / 1000,
                     duration_s=args.duration, max_packets=args.count, device=args.device_id, publish=publish)
    finally:
        if pub is not None:
            pub.close()
    doc = st.as_dict()
    if args.json:
        emit_json(doc)
    else:
        print(f"captured {doc['frames']:,} frames, {doc['packets']:,} IP packets in {doc['batches']:,} batches; "
              f"kernel drops {doc['kernel_drops']:,}, agent drops {doc['agent_drops']:,}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- synth

def _register_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a labelled synthetic IoT capture (or a large benchmark capture)",
                       description="Benign IoT devices (MQTT, CoAP, DNS, NTP, HTTP, TLS) plus attacks (SYN scan, "
                       "SYN flood, telnet brute force, DNS tunnel); flow labels go to OUT.labels.csv.")
    p.add_argument("--out", required=True, help="output .pcap")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--devices", type=int, default=12, help="benign IoT devices (default 12)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-attacks", action="store_true", help="benign traffic only")
    p.add_argument("--bench-packets", type=int, default=0,
                   help="instead: a large unlabelled benchmark capture with this many packets")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from capture.synth import write_bench_pcap, write_iot_capture
    from phoenix.cli import emit_json

    if args.bench_packets:
        out = write_bench_pcap(args.out, args.bench_packets, seed=args.seed)
    else:
        out = write_iot_capture(args.out, duration_s=args.duration, devices=args.devices, seed=args.seed,
                                attacks=not args.no_attacks)
    if args.json:
        emit_json(out)
    else:
        print(", ".join(f"{k}={v}" for k, v in out.items()), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- features / scan

def _register_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="meter a pcap into NF-v2 flow features (Parquet)",
                       description="One row per flow: verdict id, 5-tuple, first/last seen, the 39 NF-v2 "
                       "features, from the same meter the dataflow uses.")
    p.add_argument("pcap", metavar="PCAP")
    p.add_argument("--out", required=True, help="output .parquet")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=_features)


def _features(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from capture.pcapio import CaptureError, DecodeStats
    from flows.meter import FlowMeter, MeterConfig, iter_flows, records_table
    from phoenix.cli import emit_json

    st = DecodeStats()
    meter = FlowMeter(MeterConfig.from_env())
    flows = 0
    writer = None
    try:
        for rec in iter_flows(args.pcap, stats=st, meter=meter):
            t = records_table(rec)
            if writer is None:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(args.out, t.schema)
            writer.write_table(t)
            flows += len(rec)
    except (CaptureError, OSError) as exc:
        st.errors.append(str(exc))
    finally:
        if writer is None:
            from flows.meter import empty_records

            t = records_table(empty_records())
            writer = pq.ParquetWriter(args.out, t.schema)
        writer.close()
    doc = {"file": args.pcap, "out": args.out, "packets": st.packets, "flows": flows,
           "decode": {k: v for k, v in st.as_dict().items() if v and k != "errors"},
           "meter": {k: v for k, v in meter.stats.as_dict().items() if v}, "errors": st.errors}
    if args.json:
        emit_json(doc)
    else:
        print(f"{args.pcap}: {st.packets:,} packets → {flows:,} flows → {args.out}", file=sys.stderr)
        for e in st.errors:
            print(f"  error: {e}", file=sys.stderr)
    return 1 if st.errors and not flows else 0


def _register_scan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="meter and classify captures offline (no broker)",
                       description="Meter each PCAP into flows and classify them with the model artifact.")
    p.add_argument("pcaps", nargs="+", metavar="PCAP")
    p.add_argument("--model", default=None, help="model artifact (default models/phoenix.pt)")
    p.add_argument("--out", default=None, help="write per-flow verdicts to this .parquet")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--per-file", action="store_true", help="add per-file counts to the JSON")
    p.set_defaults(handler=_scan)


def scan(paths: list[str], model: str | None = None, out: str | None = None) -> dict:
    """``phoenix scan`` as a function: {"files", "packets", "flows", "malicious_flows", "errors", "per_file"}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capture.pcapio import CaptureError, DecodeStats
    from fl.model import Scorer, load_artifact
    from flows.context import ContextConfig, ContextDetector, verdict_labels
    from flows.meter import FlowMeter, MeterConfig, iter_flows, records_table
    from flows.records import FlowRecords
    from phoenix.config import DEFAULT_MODEL

    art = load_artifact(model or DEFAULT_MODEL)
    scorer = Scorer(art, device="cpu")
    cfg = MeterConfig.from_env()
    ctx_cfg = ContextConfig.from_env()
    doc: dict = {"files": 0, "packets": 0, "flows": 0, "malicious_flows": 0, "errors": [], "per_file": {}}
    writer = None
    try:
        for path in paths:
            st = DecodeStats()
            counts = {"flows": 0, "malicious_flows": 0, "model": 0, "context": 0}
            detector = ContextDetector(ctx_cfg)

            def judge(rec: FlowRecords, path: str = path, counts: dict = counts) -> None:
                nonlocal writer
                scores = scorer.scores(rec.features)
                by_model = scores >= scorer.threshold
                mal, names = verdict_labels(by_model, rec.context)
                counts["flows"] += len(rec)
                counts["malicious_flows"] += int(mal.sum())
                counts["model"] += int(by_model.sum())
                counts["context"] += int((rec.context > 0).sum()) if rec.context is not None else 0
                if out:
                    t = records_table(rec).append_column("file", pa.array([Path(path).name] * len(rec)))
                    t = t.append_column("score", pa.array(scores.astype(np.float32)))
                    t = t.append_column("malicious", pa.array(mal))
                    t = t.append_column("detector", names)
                    if writer is None:
                        Path(out).parent.mkdir(parents=True, exist_ok=True)
                        writer = pq.ParquetWriter(out, t.schema)
                    writer.write_table(t)

            try:
                for rec in iter_flows(path, stats=st, meter=FlowMeter(cfg)):
                    for judged in (detector.add(rec) if ctx_cfg.enabled else [rec]):
                        judge(judged)
            except (CaptureError, OSError) as exc:
                st.errors.append(str(exc))
            for judged in detector.flush():  # the capture is read: judge the probes it held
                judge(judged)
            doc["files"] += 1
            doc["packets"] += st.packets
            doc["flows"] += counts["flows"]
            doc["malicious_flows"] += counts["malicious_flows"]
            doc["errors"].extend(st.errors)
            doc["per_file"][Path(path).name] = {"packets": st.packets, "flows": counts["flows"],
                                                "malicious_flows": counts["malicious_flows"],
                                                "by_model": counts["model"], "by_context": counts["context"]}
    finally:
        if writer is not None:
            writer.close()
    doc["model_version"] = art.version
    doc["threshold"] = art.threshold
    return doc


def _scan(args: argparse.Namespace) -> int:
    from phoenix.cli import emit_json

    doc = scan(args.pcaps, args.model, args.out)
    per_file = doc.pop("per_file")
    if args.per_file:
        doc["per_file"] = per_file
    if args.json:
        emit_json(doc)
    else:
        for name, v in per_file.items():
            share = v["malicious_flows"] / v["flows"] if v["flows"] else 0.0
            print(f"{name}: {v['packets']:,} packets, {v['flows']:,} flows, {v['malicious_flows']:,} malicious "
                  f"({share:.0%})", file=sys.stderr)
        for e in doc["errors"]:
            print(f"error: {e}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- bench

def _register_bench_packets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-packets", help="decode + meter throughput on a large synthetic pcap",
                       description="Packets per CPU-second of decode + flow metering (the figure phoenix bench "
                       "reports as meter_packets_per_s).")
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--packets-per-flow", type=int, default=10)
    p.add_argument("--pcap", default=None, help="use this capture instead of generating one")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_packets)


def _bench_packets(args: argparse.Namespace) -> int:
    from capture.bench import meter_packets_per_s
    from phoenix.cli import emit_json

    doc = meter_packets_per_s(args.packets, args.packets_per_flow, args.pcap, args.repeat)
    if args.json:
        emit_json(doc)
    else:
        for k, v in doc.items():
            print(f"{k}: {v}")
    return 0
