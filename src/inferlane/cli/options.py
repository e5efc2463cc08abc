"""Command-line options more than one command takes, declared once."""

from __future__ import annotations

import argparse


def add_otlp(parser: argparse.ArgumentParser) -> None:
    """``--otlp-endpoint``: where OpenTelemetry traces go (core/tracing.py)."""
    parser.add_argument("--otlp-endpoint", default=None, metavar="URL",
                        help="send OpenTelemetry traces over OTLP/HTTP to URL, e.g. http://127.0.0.1:4318/v1/traces "
                             "(INFERLANE_OTLP_ENDPOINT, or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT; needs the otel "
                             "extra)")
