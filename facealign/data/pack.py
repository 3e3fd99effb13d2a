"""Annotated faces -> indexed RecordIO (``OUT.rec`` + ``OUT.idx``): the library of ``facealign-pack``
(its command line: facealign.cli.pack; procedural faces: facealign.synth.records).

Each face is cropped around its landmarks to a square canvas (384 x 384 by
default, as the reference's records): the canvas side covers ``context``
times the landmark box's longer side, so training crops never decode a full
photo. Records keep the crop's affine so predictions map back to the photo.

Output is written under temporary names and renamed at the end: an
interrupted run leaves no half-written ``.rec``. Every skipped input is listed
with its reason in ``OUT.skipped.tsv``; ``strict`` turns any skip into a
failure that writes nothing.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .records import RECORDIO_MAGIC, RecordFile, RecordWriter, Sample, decode_image, encode_image, pack_sample, \
    record_paths
from .sources import READERS, Item, Skip
from .transforms import PACKED_CANVAS, PACKED_CONTEXT, apply, similarity

# Formats whose landmark count is fixed by their scheme: a face with another count is skipped, whatever
# order the files come in (--num-points overrides).
FIXED_COUNTS = {"ibug": 68, "aflw2000": 68, "reference": 68}


@dataclass(frozen=True)
class PackOptions:
    """How faces are packed, as a worker needs it (picklable); the procedural faces' settings too."""

    canvas: int = PACKED_CANVAS  # side of the stored square image
    context: float = PACKED_CONTEXT  # canvas side / landmark box's longer side
    dims: int | None = None  # keep x, y only (2), or require x, y, z (3)
    tolerance: float = 0.1  # landmarks further outside the photo than this share of their box: skipped
    encoding: str = ".jpg"
    quality: int = 95
    seed: int = 0  # of procedural faces (facealign.synth.records)
    style: str = "photo"
    jaw: str = "visible"
    without: tuple = ()


class PackError(Exception):
    """A source that cannot be packed at all; the message names it. ``code``: the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def crop_item(item: Item, opt: PackOptions):
    """Decode, check and crop one item; returns (Sample, image bytes) or a Skip."""
    if item.image_bytes is not None:
        try:
            image = decode_image(item.image_bytes)
        except ValueError as e:
            return Skip(item.source, f"image does not decode: {e}")
    else:
        raw = cv2.imread(item.image_path, cv2.IMREAD_COLOR)  # greyscale files come back as 3 equal channels
        if raw is None:
            reason = "image file missing" if not os.path.exists(item.image_path) else "unreadable image"
            return Skip(item.source, reason)
        image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    lm = np.asarray(item.landmarks, np.float64)
    if opt.dims == 3 and lm.shape[1] != 3:
        return Skip(item.source, f"--dims 3 needs x, y, z landmarks; this face has {lm.shape[1]} coordinates")
    if opt.dims == 2:
        lm = lm[:, :2]
    if not np.isfinite(lm).all():
        return Skip(item.source, "non-finite landmark coordinates")
    h, w = image.shape[:2]
    lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
    side = float(max(hi - lo))
    if side <= 1:
        return Skip(item.source, "degenerate landmarks (all at one point)")
    tol = opt.tolerance * side
    outside = np.maximum(np.maximum(-tol - lm[:, 0], lm[:, 0] - (w - 1 + tol)),
                         np.maximum(-tol - lm[:, 1], lm[:, 1] - (h - 1 + tol)))
    if (outside > 0).any():
        i = int(outside.argmax())
        return Skip(item.source, f"landmark {i} at ({lm[i, 0]:.1f}, {lm[i, 1]:.1f}) is outside the "
                                 f"{w}x{h} image by more than {tol:.1f} px")
    center = (lo + hi) / 2
    M = similarity(center, ((opt.canvas - 1) / 2, (opt.canvas - 1) / 2), opt.canvas / (opt.context * side), 0.0)
    crop = cv2.warpAffine(image, M, (opt.canvas, opt.canvas), flags=cv2.INTER_AREA if M[0, 0] < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    pts = apply(M, lm).astype(np.float32)
    box = (np.concatenate([apply(M, item.box.reshape(2, 2)).ravel()]) if item.box is not None
           else np.concatenate([pts[:, :2].min(0), pts[:, :2].max(0)])).astype(np.float32)
    meta = {"source": item.source, "orig_size": [w, h], "crop": np.round(M, 8).tolist(), **item.meta}
    sample = Sample(image=crop, landmarks=pts, box=box, meta=meta)
    return sample, encode_image(crop, opt.encoding, opt.quality)


def work_item(payload):
    item, opt = payload
    return crop_item(item, opt)


def pack_items(items, prefix, *, canvas: int = PACKED_CANVAS, context: float = PACKED_CONTEXT) -> int:
    """Pack a few ``Item``s in this process with facealign-pack's defaults; any skip is an error (nothing written)."""
    opt = PackOptions(canvas=canvas, context=context)
    with RecordWriter(prefix) as writer:
        for item in items:
            result = crop_item(item, opt)
            if isinstance(result, Skip):
                raise ValueError(f"{result.source}: {result.reason}")
            sample, image_bytes = result
            writer.write(pack_sample(sample, writer.count, image_bytes=image_bytes))
    return len(items)


def reindex(prefix) -> int:
    """Rebuild ``PREFIX.idx`` by walking the records of ``PREFIX.rec``; returns the record count."""
    rec_path, idx_path = record_paths(prefix)
    if not rec_path.exists():
        raise SystemExit(f"facealign-pack: {rec_path}: no such record file")
    offsets = []
    size = rec_path.stat().st_size
    with open(rec_path, "rb") as fh:
        pos, in_record = 0, False
        while pos < size:
            head = fh.read(8)
            if len(head) < 8:
                raise SystemExit(f"facealign-pack: {rec_path}: truncated header at offset {pos}")
            magic, lrec = np.frombuffer(head, "<u4")
            if magic != RECORDIO_MAGIC:
                raise SystemExit(f"facealign-pack: {rec_path}: bad magic at offset {pos} after "
                                 f"{len(offsets)} records; the file is corrupt from there on")
            cflag, length = int(lrec) >> 29, int(lrec) & ((1 << 29) - 1)
            if not in_record:
                offsets.append(pos)
            in_record = cflag in (1, 2)
            pos += 8 + ((length + 3) & ~3)
            fh.seek(pos)
    tmp = idx_path.with_name(idx_path.name + f".tmp-{os.getpid()}")
    tmp.write_text("".join(f"{i}\t{off}\n" for i, off in enumerate(offsets)))
    os.replace(tmp, idx_path)
    RecordFile(prefix)  # validates the new index against the file
    return len(offsets)


def read_source(src, fmt: str, *, num_points: int | None = None, limit: int | None = None):
    """(the items of ``src`` to pack, those skipped already) in ``fmt``'s layout; a ``PackError`` for a source
    that cannot be read, or whose faces have different landmark counts where the format fixes none."""
    if not os.path.exists(src):
        raise PackError(f"{src}: no such file or folder", 2)
    try:
        entries = list(READERS[fmt](src))
    except (ValueError, RuntimeError) as e:
        raise PackError(str(e), 2) from None
    items = [e for e in entries if isinstance(e, Item)]
    skips = [e for e in entries if isinstance(e, Skip)]
    expected = num_points or FIXED_COUNTS.get(fmt)
    if expected is None:  # csv, json: any K, but one K for the whole set, never the first file's
        counts = Counter(it.landmarks.shape[0] for it in items)
        if len(counts) > 1:
            summary = ", ".join(f"{n} with {k} landmarks" for k, n in counts.most_common())
            raise PackError(f"{src}: faces with different landmark counts ({summary}); pass --num-points K to keep "
                            f"the faces with K and skip the others; nothing written", 1)
        expected = next(iter(counts), None)
    kept = []
    for it in items:
        if it.landmarks.shape[0] != expected:
            skips.append(Skip(it.source, f"{it.landmarks.shape[0]} landmarks, expected {expected}"))
        else:
            kept.append(it)
    return kept[:limit] if limit is not None else kept, skips


def write_records(work, tasks, total: int, out_prefix, *, workers: int = 1, strict: bool = False, quiet: bool = False,
                  skips=()) -> int:
    """``work(task)`` -> (Sample, image bytes) or a Skip for each of ``total`` tasks, in ``workers`` processes,
    written in task order to ``out_prefix``: whole or not at all. Returns the exit status: 0 packed, 1 nothing
    packed (or ``strict`` with skips), 130 interrupted; the skips are listed in ``OUT.skipped.tsv``."""
    skips = list(skips)
    # a bar on a terminal; nothing when piped or quiet (the summary line below still prints)
    progress = tqdm(total=total, desc="packing", unit="face", file=sys.stderr, disable=quiet or not sys.stderr.isatty())
    writer = RecordWriter(out_prefix)
    try:
        workers = max(1, min(workers or 1, total or 1))
        if workers > 1:
            # spawn, not fork: a caller that runs MXNet (a trainer, a test) has threads whose locks a
            # forked child would inherit held, and hang on.
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,))
            results = pool.imap(work, tasks, chunksize=4)  # ordered: the output does not depend on workers
        else:
            pool, results = None, map(work, tasks)
        try:
            for result in results:
                if isinstance(result, Skip):
                    skips.append(result)
                else:
                    sample, image_bytes = result
                    writer.write(pack_sample(sample, writer.count, image_bytes=image_bytes))
                progress.update(1)
                if skips:
                    progress.set_postfix(skipped=len(skips), refresh=False)
        finally:
            progress.close()
            if pool is not None:
                pool.terminate()
        if strict and skips:
            raise RuntimeError(f"--strict: {len(skips)} input(s) skipped")
        if writer.count == 0:
            raise RuntimeError("no face could be packed")
    except BaseException as e:
        writer.abort()
        report_skips(skips, out_prefix, quiet)
        if isinstance(e, KeyboardInterrupt):
            print("facealign-pack: interrupted; nothing written", file=sys.stderr)
            return 130
        if isinstance(e, RuntimeError):
            print(f"facealign-pack: {e}; nothing written", file=sys.stderr)
            return 1
        raise
    writer.close()
    size_mb = writer.rec_path.stat().st_size / 1e6
    print(f"facealign-pack: wrote {writer.count} records to {writer.rec_path} ({size_mb:.1f} MB) and "
          f"{writer.idx_path}", file=sys.stderr)
    report_skips(skips, out_prefix, quiet)
    return 0


def report_skips(skips, out_prefix, quiet: bool) -> None:
    """``OUT.skipped.tsv`` (removed when nothing was skipped) and a summary by kind of reason on stderr."""
    report_path = Path(str(out_prefix) + ".skipped.tsv")
    if not skips:
        report_path.unlink(missing_ok=True)
        return
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("source\treason\n" + "".join(f"{s.source}\t{s.reason}\n" for s in skips))
    kinds = [re.sub(r"-?\d+(\.\d+)?", "#", s.reason) for s in skips]  # group "landmark 3 at (1, 2)" with its kind
    by_reason = Counter(kinds)
    print(f"facealign-pack: skipped {len(skips)} input(s); all listed in {report_path}", file=sys.stderr)
    if not quiet:
        for reason, n in by_reason.most_common(8):
            example = next(s.source for s, kind in zip(skips, kinds) if kind == reason)
            print(f"  {n:6d} x {reason}  (e.g. {example})", file=sys.stderr)
