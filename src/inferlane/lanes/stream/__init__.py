"""The stream lane: micro-batch scoring of Kafka topics and Redis streams (docs/stream.md)."""

from inferlane.lanes.stream.decode import Decoded, EventDecoder
from inferlane.lanes.stream.metrics import StreamMetrics
from inferlane.lanes.stream.runner import StreamRunner, StreamSettings
from inferlane.lanes.stream.sinks import open_dead_letters, open_stream_sink
from inferlane.lanes.stream.sources import Event, open_source

__all__ = ["Decoded", "Event", "EventDecoder", "StreamMetrics", "StreamRunner", "StreamSettings",
           "open_dead_letters", "open_source", "open_stream_sink"]
