"""The demo: a fraud-scoring model trained on synthetic transactions, served and load-tested."""
