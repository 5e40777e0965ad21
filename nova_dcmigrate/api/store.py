"""The records dcmigrate-api has seen, kept in a small SQL table.

Source computes keep redirect records in memory (bounded); a restart of
nova-compute forgets them. The API stores every record it creates or
reads, so a finished redirect stays listed. One table, one row per
redirect, the record's JSON as the row's body; SQLAlchemy Core, any URL
SQLAlchemy takes (``[database] connection``; default a sqlite file under
``[DEFAULT] state_path``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg
import sqlalchemy as sa

METADATA = sa.MetaData()
REDIRECTS = sa.Table(
    "dcmigrate_redirects", METADATA,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("server_id", sa.String(36), nullable=False, index=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)


def connection_url(conf: cfg.ConfigOpts) -> str:
    if conf.database.connection:
        return str(conf.database.connection)
    os.makedirs(conf.state_path, exist_ok=True)
    return "sqlite:///%s" % os.path.join(conf.state_path,
                                         "dcmigrate-api.sqlite")


class RecordStore:
    """Upsert and read redirect records (dicts of the REST API)."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine = sa.create_engine(url, **kwargs)
        METADATA.create_all(self.engine)
        self._lock = threading.Lock()

    def save(self, records: Iterable[dict[str, Any]]) -> None:
        with self._lock, self.engine.begin() as conn:
            for rec in records:
                row = {"id": rec["id"], "server_id": rec["server_id"],
                       "created_at": rec["created_at"],
                       "body": json.dumps(rec, sort_keys=True)}
                done = conn.execute(
                    REDIRECTS.update().where(REDIRECTS.c.id == rec["id"])
                    .values(**row))
                if not done.rowcount:
                    conn.execute(REDIRECTS.insert().values(**row))

    def list_server(self, server_id: str) -> list[dict[str, Any]]:
        """The server's records, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(REDIRECTS.c.body)
                .where(REDIRECTS.c.server_id == server_id)
                .order_by(REDIRECTS.c.created_at.desc()))
            return [json.loads(r[0]) for r in rows]

    def get(self, server_id: str, redirect_id: str
            ) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(REDIRECTS.c.body)
                .where(REDIRECTS.c.server_id == server_id)
                .where(REDIRECTS.c.id == redirect_id)).first()
        return None if row is None else json.loads(row[0])

    def sources(self, server_id: str) -> list[str]:
        """Source hosts of the server's records, newest first."""
        out: list[str] = []
        for rec in self.list_server(server_id):
            if rec["source"] not in out:
                out.append(rec["source"])
        return out
