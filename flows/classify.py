"""The main job: ``python -m bytewax.run flows.classify``.

    requests streams ─► decode ─┬─ NetFlow records ─────────────────────────────────────┐
    (RabbitMQ)                  ├─ packets ─► meter into NF-v2 flows ─► scan/flood context ┼─► batch ─► classify ─┬─► verdicts + alerts (RabbitMQ, confirmed)
                                └─ dead letters ◄── (bad input, reason) ◄─────────────────┘                      └─► Parquet archive

A verdict is malicious when the model's score reaches the artifact's threshold or when a context
detector (flows/context.py: port scan, host sweep, SYN flood, judged across flows) flags the flow;
its ``detector`` column says which.

Settings come from ``PHOENIX_*`` variables (phoenix.config.Settings). Run several processes
with ``-i/-a``; with ``-r DIR -s N -b N`` a killed process resumes from its last snapshot and
every record still gets a verdict (at least once; verdict ids are deterministic).
"""

from __future__ import annotations

import logging
import os

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.archive import ParquetArchiveSink
from flows.context import context_stage
from flows.decode import Decoder
from flows.infer import Classifier, rebatch
from flows.meter import meter_packets
from flows.rabbitmq import CaughtUp, DeadLetterSink, RequestStreamSource, VerdictSink
from flows.records import FlowRecords
from phoenix import schema
from phoenix.config import Settings

logging.basicConfig(level=os.environ.get("PHOENIX_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("pika").setLevel(logging.WARNING)


def build(settings: Settings) -> Dataflow:
    flow = Dataflow("phoenix_classify")
    deliveries = op.input("requests", flow, RequestStreamSource(settings))
    decoded = op.flat_map_batch("decode", deliveries, Decoder(settings))

    by_kind = op.branch("is_records", decoded, lambda x: isinstance(x, FlowRecords))
    # packet requests, and the sources' caught-up marks that drive the meter's clock
    rest = op.branch("is_packets", by_kind.falses, lambda x: isinstance(x, schema.Request | CaughtUp))
    metered, meter_dead = meter_packets("meter", rest.trues, settings)

    judged = context_stage("context", metered, settings)
    records = op.merge("records", by_kind.trues, judged)
    batches = op.flat_map_batch("batch", records, rebatch(settings.batch_max_records))
    classifier = Classifier(settings)
    classifier.scorer  # load the model now, not on the first batch: no latency spike at start  # noqa: B018
    verdicts = op.map("classify", batches, classifier)

    op.output("verdicts", verdicts, VerdictSink(settings))
    op.output("archive", verdicts, ParquetArchiveSink(settings))
    op.output("dead_letters", op.merge("all_dead", rest.falses, meter_dead), DeadLetterSink(settings))
    return flow


flow = build(Settings.from_env())
