"""``facealign-pack``: annotated faces, or procedural ones, -> indexed RecordIO (``OUT.rec`` + ``OUT.idx``).

    facealign-pack --format ibug  300W/            data/300w_train
    facealign-pack --format json  faces.json       data/custom
    facealign-pack --synthetic 2000 --seed 1       data/synth_train
    facealign-pack --reindex data/300w_train       # rebuild a lost .idx from the .rec

Each face is cropped around its landmarks to a square canvas (384 x 384 by default, as the reference's
records): see facealign.data.pack. Output is written under temporary names and renamed at the end; every
skipped input is listed with its reason in ``OUT.skipped.tsv``; ``--strict`` turns any skip into a failure
that writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

from facealign.data.pack import PackError, PackOptions, read_source, reindex, work_item, write_records
from facealign.data.records import record_paths
from facealign.data.sources import FORMATS
from facealign.data.transforms import PACKED_CANVAS, PACKED_CONTEXT
from facealign.synth.photo import PARTS as PHOTO_PARTS
from facealign.synth.records import render_record

EPILOG = """record layout: see facealign/data/records.py (format version 1).
exit status: 0 packed, 1 nothing packed or --strict with skips, 2 bad arguments."""


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



def options(args) -> PackOptions:
    return PackOptions(canvas=args.canvas, context=args.context, dims=args.dims, tolerance=args.outside_tolerance,
                       encoding="." + args.encoding, quality=args.quality, seed=args.seed, style=args.style,
                       jaw=args.jaw, without=tuple(args.without))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reindex:
        n = reindex(args.paths[0])
        print(f"facealign-pack: rebuilt {record_paths(args.paths[0])[1]} ({n} records)")
        return 0
    opt, out_prefix = options(args), args.paths[-1]
    if args.synthetic is not None:
        total = args.synthetic if args.limit is None else min(args.synthetic, args.limit)
        tasks, work, skips = ((i, opt) for i in range(total)), render_record, []
    else:
        try:
            items, skips = read_source(args.paths[0], args.format, num_points=args.num_points, limit=args.limit)
        except PackError as e:
            print(f"facealign-pack: {e}", file=sys.stderr)
            return e.code
        total, tasks, work = len(items), ((it, opt) for it in items), work_item
    return write_records(work, tasks, total, out_prefix, workers=args.workers, strict=args.strict, quiet=args.quiet,
                         skips=skips)


if __name__ == "__main__":
    sys.exit(main())
