"""Benchmarks behind ``mv2mae bench <what>``: each returns a JSON-able dict and prints a table."""
