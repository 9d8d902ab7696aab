"""Data: the shared `Sample` record, row readers (authors' JSON, parquet, folders) and MedPhantom."""

from vitos.data.readers import DataError, ReadResult, read_rows, write_rows
from vitos.data.sample import Sample

__all__ = ["DataError", "ReadResult", "Sample", "read_rows", "write_rows"]
