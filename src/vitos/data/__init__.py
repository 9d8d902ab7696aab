"""Data: the shared `Sample` record, row readers and the MedPhantom generator."""

from vitos.data.sample import Sample

__all__ = ["Sample"]
