"""What an offline W&B run really recorded, read from its ``.wandb`` log: the records W&B would upload.

The log is W&B's LevelDB-style record log: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each with a 7-byte header (CRC-32, length, type: full, first, middle, last) and a piece of one
serialised ``wandb.proto.wandb_internal_pb2.Record``; a block's tail too short for a header is padding.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every ``Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    pos, pieces = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # padding at a block's end
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding
            pos += BLOCK - pos % BLOCK
            continue
        pieces.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record


def _items(items) -> dict:
    """Config, history or summary items as a dict; a nested key (a table's fields) as nested dicts."""
    out: dict = {}
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        where = out
        for key in parents:
            where = where.setdefault(key, {})
        where[last] = json.loads(item.value_json)
    return out


def _finished_logs(run_dir: Path, wait_s: float = 30.0) -> list[Path]:
    """The run's ``.wandb`` logs once the last one holds its exit record. ``run.finish()`` can return before W&B's
    service has written the log out when one service serves several runs in a process (seen once in CI: a log with
    none of its records), so a reader in the same process waits for the exit record, as ``wandb sync`` needs one."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        logs = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        try:
            kinds = [r.WhichOneof("record_type") for r in records(logs[-1])] if logs else []
        except Exception:  # a log still being written: a short header or a torn last record
            kinds = []
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logs, f"no offline W&B log under {run_dir}"
    assert "exit" in kinds, f"{logs[-1]} has no exit record after {wait_s:.0f} s; its records: {kinds}"
    return logs


class OfflineRun:
    """The config (as W&B ends up with it: later config records overwrite earlier keys), history rows, summary and
    metric definitions that an offline run's ``.wandb`` log holds; shaped like ``wandb.Api().runs()``'s runs."""

    def __init__(self, run_dir: Path):
        self._dir = Path(run_dir)
        logs = _finished_logs(self._dir)
        self.config_records, self.rows, self.summary, self.metrics, self.files = [], [], {}, {}, []
        self.name = self.id = self.group = self.job_type = None
        for log in logs:  # a resumed run writes a second log
            for record in records(log):
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    self.name, self.id = record.run.display_name, record.run.run_id
                    self.group, self.job_type = record.run.run_group, record.run.job_type
                    if record.run.config.update:
                        self.config_records.append(_items(record.run.config.update))
                elif kind == "config":
                    self.config_records.append(_items(record.config.update))
                elif kind == "history":
                    self.rows.append(_items(record.history.item))
                elif kind == "summary":
                    self.summary.update(_items(record.summary.update))
                elif kind == "metric":
                    self.metrics[record.metric.name or record.metric.glob_name] = record.metric
                elif kind == "files":  # saved with run.save: paths in the run's files
                    self.files += [item.path for item in record.files.files]
        self.config = {}
        for update in self.config_records:
            self.config.update({k: v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
                                for k, v in update.items() if k != "_wandb"})
        self.state = "finished"

    def scan_history(self):
        return iter(self.rows)

    def file(self, name: str) -> "OfflineFile":
        """``Run.file(name)``: a file the run saved, downloadable as the public API's ``File`` is."""
        if name not in self.files:
            raise ValueError(f"run {self.id} saved no file {name}")
        return OfflineFile(next(self._dir.glob(f"wandb/offline-run-*/files/{name}")))


class OfflineFile:
    """The public API's ``File``: ``download(root, replace)`` writes it under ``root``."""

    def __init__(self, path: Path):
        self.path = path

    def download(self, root: str = ".", replace: bool = False, exist_ok: bool = False):
        import shutil

        target = Path(root) / self.path.name
        if target.exists() and not replace:
            raise ValueError(f"{target} exists")
        shutil.copyfile(self.path, target)
        return open(target)


class OfflineApi:
    """``wandb.Api()`` over offline runs: ``runs(project)`` yields them."""

    def __init__(self, runs: list[OfflineRun]):
        self._runs = runs

    def runs(self, project, filters=None):
        return self._runs
