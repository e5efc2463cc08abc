"""The stream lane: micro-batch scoring of Kafka topics and Redis streams (docs/stream.md).

Events are decoded by the input contract's record decoder (core/inputs/records.py), the same one
that reads batch JSONL lines.
"""

from inferlane.lanes.stream.main import StreamJob, run_stream
from inferlane.lanes.stream.metrics import StreamMetrics
from inferlane.lanes.stream.runner import StreamRunner, StreamSettings
from inferlane.lanes.stream.sinks import open_dead_letters, open_stream_sink
from inferlane.lanes.stream.sources import Event, open_source

__all__ = ["Event", "StreamJob", "StreamMetrics", "StreamRunner", "StreamSettings", "open_dead_letters",
           "open_source", "open_stream_sink", "run_stream"]
