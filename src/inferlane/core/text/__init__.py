"""Text models: a ``tokenizer:`` stage (strings in, token ids and masks to the model), pooling and
normalisation for embedding models, and length-aware batching by padded-length bucket.

``config`` holds the model.yaml sections (imported by core/spec.py, so it imports nothing of the
core); ``stage`` runs them (imported by core/model.py); ``export`` writes the all-MiniLM-L6-v2
example repository. Import them by module: this package imports nothing eagerly, to keep
core/spec.py free of a cycle.
"""
