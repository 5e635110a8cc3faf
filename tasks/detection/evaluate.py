"""Evaluate any COCO results file against COCO ground truth, exactly as pycocotools does.

python -m tasks.detection.evaluate --gt instances.json --results detections.json \
    [--iou-type bbox|segm] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

from tasks.common.files import write_json_atomic
from tasks.detection.coco_eval import coco_evaluate


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, print the summary table, optionally write the 12 numbers as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tasks.detection.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--results", required=True, help="COCO results JSON (list of detections)")
    parser.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"))
    parser.add_argument("--backend", default="auto", choices=("auto", "pycocotools", "faster_coco_eval"))
    parser.add_argument("--json", default=None, help="write {AP, AP50, ..., ARl} here at full precision")
    args = parser.parse_args(argv)
    try:
        metrics = coco_evaluate(args.gt, args.results, iou_type=args.iou_type, backend=args.backend)
    except (FileNotFoundError, ValueError, ImportError) as err:
        parser.exit(2, f"error: {err}\n")
    if args.json:
        write_json_atomic(args.json, metrics)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
