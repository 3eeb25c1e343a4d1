"""Operator tooling behind the ``persisting`` command: find, inspect, verify, maintain, export
and serve metrics for the stores under a directory."""

from persisting.ops.catalog import StoreInfo, TableInfo, discover
from persisting.ops.verify import Finding, VerifyReport, verify

__all__ = ["Finding", "StoreInfo", "TableInfo", "VerifyReport", "discover", "verify"]
