"""dlt contender: its `rest_api` source (offset pagination), `merge` on `id`, into SQLite.

Runs in the bench's own virtualenv (`bench/.venv-dlt`), never in botasync's. The
destination is dlt's sqlalchemy destination on a SQLite file. The API has no
`updated_at`, so there is no incremental cursor: every run walks every page and
merges every row. Prints one JSON line: rows in the destination, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from pathlib import Path

# dlt must not phone home from a benchmark (and the bench has no network but loopback)
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import dlt
from dlt.sources.rest_api import rest_api_source


def source(url: str, key: str):  # type: ignore[no-untyped-def]
    """The recordings list as a dlt rest_api source: limit 100, offset, stop on has_more."""
    return rest_api_source({
        "client": {
            "base_url": url.rstrip("/") + "/",
            "auth": {"type": "bearer", "token": key},
            "paginator": {"type": "offset", "limit": 100, "offset_param": "offset",
                          "limit_param": "limit", "total_path": None,
                          "has_more_path": "has_more"},
        },
        "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
        "resources": [{"name": "recordings",
                       "endpoint": {"path": "recordings", "data_selector": "data"}}],
    })


def count_rows(db: Path) -> int:
    """Rows of the recordings table, in whichever SQLite file dlt put the dataset."""
    for path in sorted(db.parent.glob(db.stem + "*.db")):
        con = sqlite3.connect(path)
        try:
            return int(con.execute("SELECT count(*) FROM recordings").fetchone()[0])
        except sqlite3.OperationalError:
            continue
        finally:
            con.close()
    return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--pipelines-dir", required=True)
    args = p.parse_args()
    started = time.monotonic()
    pipeline = dlt.pipeline(
        pipeline_name="bota_bench", pipelines_dir=args.pipelines_dir, dataset_name="main",
        destination=dlt.destinations.sqlalchemy(credentials=f"sqlite:///{args.db}"))
    info = pipeline.run(source(args.url, args.key))
    seconds = time.monotonic() - started
    print(json.dumps({"rows": count_rows(args.db), "seconds": round(seconds, 3),
                      "loads": len(info.loads_ids), "dlt": dlt.__version__}))


if __name__ == "__main__":
    main()
