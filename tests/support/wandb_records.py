"""Reading a W&B offline run back (the .wandb record file), for tests that check what was logged."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def read_wandb_records(path: Path) -> list[Any]:
    """Decode a .wandb transaction log (LevelDB log format: 7-byte file header, 32 KiB blocks,
    records = crc32 u32, length u16, type u8 (1 full, 2 first, 3 middle, 4 last) + protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # too small for a header: padded to the next block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def records_of(records: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for h in records_of(records, "history"):
        row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.item}
        row["_step_num"] = h.step.num
        rows.append(row)
    return rows


def summary_values(records: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in records_of(records, "summary"):
        for u in s.update:
            out["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    return out


def config_values(records: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in records_of(records, "config"):
        for u in c.update:
            out[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    return out


def offline_dirs(wandb_dir: Path, run_id: str) -> list[Path]:
    return sorted(p for p in (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}*") if not p.is_symlink())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def synced_history(dirs: list[Path], run_id: str) -> list[dict[str, Any]]:
    """The run's history as W&B keeps it once its offline attempts are synced in order: a row whose step the run
    already has is dropped (W&B's step axis only goes forward)."""
    kept: list[dict[str, Any]] = []
    for d in dirs:
        for row in history_rows(read_wandb_records(d / f"run-{run_id}.wandb")):
            if not kept or row["_step_num"] > kept[-1]["_step_num"]:
                kept.append(row)
    return kept
