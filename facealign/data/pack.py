"""``facealign-pack``: annotated faces -> indexed RecordIO (``OUT.rec`` + ``OUT.idx``).

    facealign-pack --format ibug  300W/            data/300w_train
    facealign-pack --format json  faces.json       data/custom
    facealign-pack --synthetic 2000 --seed 1       data/synth_train
    facealign-pack --reindex data/300w_train       # rebuild a lost .idx from the .rec

Each face is cropped around its landmarks to a square canvas (384 x 384 by
default, as the reference's records): the canvas side covers ``--context``
times the landmark box's longer side, so training crops never decode a full
photo. Records keep the crop's affine so predictions map back to the photo.

Output is written under temporary names and renamed at the end: an
interrupted run leaves no half-written ``.rec``. Every skipped input is listed
with its reason in ``OUT.skipped.tsv``; ``--strict`` turns any skip into a
failure that writes nothing.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from .records import RECORDIO_MAGIC, RecordFile, RecordWriter, Sample, decode_image, encode_image, pack_sample, \
    record_paths
from .sources import FORMATS, READERS, Item, Skip
from .transforms import PACKED_CANVAS, PACKED_CONTEXT, apply, similarity

EPILOG = """record layout: see facealign/data/records.py (format version 1).
exit status: 0 packed, 1 nothing packed or --strict with skips, 2 bad arguments."""


# Formats whose landmark count is fixed by their scheme: a face with another count is skipped, whatever
# order the files come in (--num-points overrides).
FIXED_COUNTS = {"ibug": 68, "aflw2000": 68, "reference": 68}


PHOTO_PARTS = ("identity", "detail", "backgrounds", "camera")  # facealign.synth.photo.PARTS (no renderer import here)


def _parts(text: str) -> tuple:
    parts = tuple(p for p in text.split(",") if p)
    unknown = [p for p in parts if p not in PHOTO_PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(PHOTO_PARTS)}")
    return parts


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-pack", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="SRC OUT_PREFIX",
                   help="source (folder or file, per --format) and output prefix; only OUT_PREFIX with "
                        "--synthetic or --reindex")
    p.add_argument("--format", choices=FORMATS, help="layout of SRC (see facealign/data/sources.py)")
    p.add_argument("--synthetic", type=int, metavar="N", help="render N procedural faces instead of reading SRC")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set (default 0)")
    p.add_argument("--style", choices=("photo", "flat"), default="photo",
                   help="with --synthetic: photographic faces (default) or the first renderer's flat-shaded ones")
    p.add_argument("--without", type=_parts, default=(), metavar="PART[,PART]",
                   help="with --synthetic --style photo: leave parts out, for ablations: " + ", ".join(PHOTO_PARTS)
                        + " (see facealign/synth/photo.py)")
    p.add_argument("--jaw", choices=("visible", "projected"), default="visible",
                   help="with --synthetic: jaw points on the visible outline as 300-W annotates them (default; "
                        "for 2D training), or the 3D jaw projected as AFLW2000-3D does (for z models)")
    p.add_argument("--reindex", action="store_true", help="rebuild OUT_PREFIX.idx by scanning OUT_PREFIX.rec")
    p.add_argument("--canvas", type=int, default=PACKED_CANVAS, help="side of the stored square image (default 384)")
    p.add_argument("--context", type=float, default=PACKED_CONTEXT,
                   help="canvas side / landmark box's longer side (default 2.25: the reference's framing)")
    p.add_argument("--num-points", type=int, help="expected landmarks per face (default: 68 for ibug, aflw2000 and "
                   "reference; for csv and json the one count the set has); others are skipped")
    p.add_argument("--dims", type=int, choices=(2, 3), help="store only x, y (2) or require x, y, z (3)")
    p.add_argument("--outside-tolerance", type=float, default=0.1,
                   help="skip faces with landmarks further outside the photo than this fraction of the "
                        "landmark box (default 0.1)")
    p.add_argument("--encoding", choices=("jpg", "png"), default="jpg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    p.add_argument("--limit", type=int, help="pack at most this many faces")
    p.add_argument("--strict", action="store_true", help="fail, writing nothing, if any input is skipped")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if args.reindex or args.synthetic is not None:
        if len(args.paths) != 1:
            p.error("--synthetic and --reindex take exactly one path: OUT_PREFIX")
        if args.format:
            p.error("--format does not go with --synthetic or --reindex")
    else:
        if len(args.paths) != 2:
            p.error("expected SRC OUT_PREFIX")
        if not args.format:
            p.error("--format is required to read SRC (one of: " + ", ".join(FORMATS) + ")")
    if args.without and (args.synthetic is None or args.style != "photo"):
        p.error("--without goes with --synthetic --style photo")
    if args.synthetic is not None and args.synthetic < 1:
        p.error("--synthetic N needs N >= 1")
    return args


class _Options:
    """The settings a worker needs (picklable)."""

    def __init__(self, args):
        self.canvas, self.context = args.canvas, args.context
        self.dims, self.tolerance = args.dims, args.outside_tolerance
        self.encoding, self.quality = "." + args.encoding, args.quality
        self.seed, self.style, self.jaw = args.seed, args.style, args.jaw
        self.without = tuple(getattr(args, "without", ()))


def crop_item(item: Item, opt: _Options):
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


def _work_item(payload):
    item, opt = payload
    return crop_item(item, opt)


def _work_synthetic(payload):
    index, opt = payload
    from facealign.synth import render_face

    face = render_face(opt.seed, index, opt.canvas, opt.style, opt.without)
    jaw = opt.jaw if face.visible_landmarks is not None else "projected"  # the flat style has only the projected
    lm = face.landmarks if jaw == "projected" else face.visible_landmarks
    lm = np.asarray(lm if opt.dims != 2 else lm[:, :2], np.float64)
    image, M = face.image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if opt.style == "photo":  # framed as photographs are packed (crop_item): centred on its labels' box, scaled to it
        lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
        M = similarity((lo + hi) / 2, ((opt.canvas - 1) / 2, (opt.canvas - 1) / 2),
                       opt.canvas / (opt.context * float(max(hi - lo))), 0.0)
        image = cv2.warpAffine(image, M, (opt.canvas, opt.canvas), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        lm = apply(M, lm)
    lm = lm.astype(np.float32)
    box = np.concatenate([lm[:, :2].min(0), lm[:, :2].max(0)]).astype(np.float32)
    meta = {"source": f"synthetic:{opt.seed}:{index}", "dataset": "synthetic", "scheme": "ibug68",
            "style": opt.style + "".join(f"-no-{part}" for part in opt.without), "jaw": jaw,
            "pose": [round(v, 3) for v in face.pose], "orig_size": [opt.canvas, opt.canvas],
            "crop": np.round(M, 8).tolist()}
    sample = Sample(image=image, landmarks=lm, box=box, meta=meta)
    return sample, encode_image(image, opt.encoding, opt.quality)


def pack_items(items, prefix, *, canvas: int = PACKED_CANVAS, context: float = PACKED_CONTEXT) -> int:
    """Pack a few ``Item``s in this process with facealign-pack's defaults; any skip is an error (nothing written)."""
    args = argparse.Namespace(canvas=canvas, context=context, dims=None, outside_tolerance=0.1, encoding="jpg",
                              quality=95, seed=0, style="photo", jaw="visible")
    opt = _Options(args)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reindex:
        n = reindex(args.paths[0])
        print(f"facealign-pack: rebuilt {record_paths(args.paths[0])[1]} ({n} records)")
        return 0

    opt = _Options(args)
    out_prefix = args.paths[-1]
    if args.synthetic is not None:
        total = args.synthetic if args.limit is None else min(args.synthetic, args.limit)
        tasks = ((i, opt) for i in range(total))
        work = _work_synthetic
        pre_skips = []
    else:
        src = args.paths[0]
        if not os.path.exists(src):
            print(f"facealign-pack: {src}: no such file or folder", file=sys.stderr)
            return 2
        try:
            entries = list(READERS[args.format](src))
        except (ValueError, RuntimeError) as e:
            print(f"facealign-pack: {e}", file=sys.stderr)
            return 2
        items = [e for e in entries if isinstance(e, Item)]
        pre_skips = [e for e in entries if isinstance(e, Skip)]
        expected = args.num_points or FIXED_COUNTS.get(args.format)
        if expected is None:  # csv, json: any K, but one K for the whole set, never the first file's
            counts = Counter(it.landmarks.shape[0] for it in items)
            if len(counts) > 1:
                summary = ", ".join(f"{n} with {k} landmarks" for k, n in counts.most_common())
                print(f"facealign-pack: {src}: faces with different landmark counts ({summary}); pass "
                      f"--num-points K to keep the faces with K and skip the others; nothing written", file=sys.stderr)
                return 1
            expected = next(iter(counts), None)
        kept = []
        for it in items:
            if it.landmarks.shape[0] != expected:
                pre_skips.append(Skip(it.source, f"{it.landmarks.shape[0]} landmarks, expected {expected}"))
            else:
                kept.append(it)
        if args.limit is not None:
            kept = kept[:args.limit]
        total = len(kept)
        tasks = ((it, opt) for it in kept)
        work = _work_item

    from tqdm import tqdm

    skips = list(pre_skips)
    # a bar on a terminal; nothing when piped or --quiet (the summary line below still prints)
    progress = tqdm(total=total, desc="packing", unit="face", file=sys.stderr,
                    disable=args.quiet or not sys.stderr.isatty())
    done = 0
    writer = RecordWriter(out_prefix)
    try:
        workers = max(1, min(args.workers or 1, total or 1))
        if workers > 1:
            # spawn, not fork: a caller that runs MXNet (a trainer, a test) has threads whose locks a
            # forked child would inherit held, and hang on.
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,))
            results = pool.imap(work, tasks, chunksize=4)  # ordered: the output does not depend on --workers
        else:
            pool, results = None, map(work, tasks)
        try:
            for result in results:
                done += 1
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
        if args.strict and skips:
            raise RuntimeError(f"--strict: {len(skips)} input(s) skipped")
        if writer.count == 0:
            raise RuntimeError("no face could be packed")
    except BaseException as e:
        writer.abort()
        _report(skips, out_prefix, args.quiet)
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
    _report(skips, out_prefix, args.quiet)
    return 0


def _report(skips, out_prefix, quiet):
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


if __name__ == "__main__":
    sys.exit(main())
