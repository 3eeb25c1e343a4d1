"""``persisting metrics serve`` as a subprocess on 127.0.0.1, scraped over HTTP."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DOCUMENTED = ("persisting_table_rows", "persisting_records_total", "persisting_buffer_size", "persisting_wal_size_bytes",
              "persisting_flush_duration_seconds")


def _scrape(url: str) -> tuple[str, dict[tuple[str, str, str], float]]:
    with urllib.request.urlopen(url, timeout=20) as resp:
        text = resp.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "table" in s.labels:
                values[(s.name, s.labels["store"], s.labels["table"])] = s.value
    return text, values


def test_metrics_serve_exports_what_is_on_disk(stores: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "persisting.cli", "metrics", "serve", str(stores.root), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.poll())
        url = line.split()[-1]
        text, values = _scrape(url)
        for name in DOCUMENTED:
            assert f"# TYPE {name.removesuffix('_total')} " in text or f"# TYPE {name} " in text, name
        # a row count goes down on deletes: a gauge; the counter counts appends, in writers only
        assert "# TYPE persisting_table_rows gauge" in text
        assert "# TYPE persisting_records counter" in text or "# TYPE persisting_records_total counter" in text
        assert not any(name == "persisting_records_total" for name, _, _ in values)
        q = stores.QUEUE_RECORDS
        assert values[("persisting_table_rows", "queue", "bucket_0")] == q
        assert values[("persisting_table_rows", "queue", "bucket_1")] == q + 1
        assert values[("persisting_table_rows", "params", "checkpoints")] == 3
        assert values[("persisting_table_rows", "trajectory", "steps")] == 4 + 5 + 6
        total = stores.PLAIN_COMMITTED + stores.PLAIN_PENDING
        assert values[("persisting_table_rows", "table", "events")] == total
        assert values[("persisting_buffer_size", "table", "events")] == stores.PLAIN_PENDING
        wal_dir = stores.root / "plain" / "events.wal"
        on_disk = sum(os.path.getsize(p) for p in glob.glob(str(wal_dir / "**" / "*.wal"), recursive=True))
        assert values[("persisting_wal_size_bytes", "table", "events")] == on_disk > 0

        stores.writer.append([{"i": -1, "name": "late"}])  # read again at every scrape
        stores.writer.sync()
        _, again = _scrape(url)
        assert again[("persisting_table_rows", "table", "events")] == total + 1
        assert again[("persisting_buffer_size", "table", "events")] == stores.PLAIN_PENDING + 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_dashboard_charts_the_exported_metrics() -> None:
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[2] / "dashboards" / "grafana-persisting.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bpersisting_[a-z_]+", e)}
    for name in DOCUMENTED:
        assert any(u.startswith(name) for u in used), name
    exported = {"persisting_table_rows", "persisting_records_total", "persisting_buffer_size", "persisting_wal_size_bytes",
                "persisting_flush_duration_seconds_bucket", "persisting_table_bytes", "persisting_table_versions",
                "persisting_last_write_timestamp_seconds", "persisting_table_unreadable",
                "persisting_bytes_written_total", "persisting_bytes_read_total"}  # the last two: writer processes
    assert used <= exported, used - exported
