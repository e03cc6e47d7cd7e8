"""An offline W&B run read back with W&B's own record type: the `.wandb` file is a LevelDB-style log of
`wandb_internal_pb2.Record` protobufs (32 KiB blocks; a 7-byte header per piece: CRC, length, kind; a
7-byte file header `:W&B`, magic, version). wandb 0.31 reads these in its Go core only, so the framing is
read here and each record decoded by wandb's own protobuf."""

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # the rest of a block too small for a header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if position + HEADER + length > len(data):  # still being written
            return
        piece = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        pending += piece
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(run_folder: Path, timeout: float = 60) -> list:
    """The run's records once W&B has written its last one (`exit`): its service process writes the file
    after `run.finish()` returns, so on a busy machine the end comes a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        [run_file] = run_folder.glob("run-*.wandb")
        found = list(records(run_file))
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def history(run_folder: Path) -> list[dict]:
    """The metrics rows logged to the offline run in `run_folder` (…/wandb/offline-run-…)."""
    rows = []
    for record in finished_records(run_folder):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_config(run_folder: Path) -> dict:
    for record in finished_records(run_folder):
        if record.WhichOneof("record_type") == "run":
            return {item.key: json.loads(item.value_json) for item in record.run.config.update}
    return {}
