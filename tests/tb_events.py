"""Read TensorBoard event files back (TFRecord framing + tensorboardX's protobufs), for the tests."""
import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def read_events(directory):
    """Every Event in the event files under ``directory``, in file order."""
    events = []
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            start = pos + 12  # length, then its masked CRC
            ev = event_pb2.Event()
            ev.ParseFromString(data[start:start + length])
            events.append(ev)
            pos = start + length + 4  # the data's masked CRC
    return events


def scalars(directory):
    """{tag: [(step, value), ...]}"""
    out = {}
    for ev in read_events(directory):
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def images(directory):
    return {v.tag for ev in read_events(directory) for v in ev.summary.value if v.HasField("image")}
