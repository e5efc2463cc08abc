"""Open Inference Protocol V2 REST (plus the V1 ``:predict`` form) over Starlette."""
