"""Data: task datasets, their tokenisation, and non-IID partitions over devices."""
