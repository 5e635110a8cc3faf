"""CamVid in SegNet's preparation (11 classes; label 11 is ignored)."""

from __future__ import annotations

from pathlib import Path

from tasks.segmentation.datasets.base import IGNORE_INDEX, DatasetSpec, Sample, check_exists, identity_lut

# --- CamVid in SegNet's preparation (Brostow et al., PRL 2009; Badrinarayanan et al., TPAMI 2017).
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip


def _resolve(root: Path, listed: str) -> Path:
    # SegNet's lists hold absolute paths of the authors' machine (/SegNet/CamVid/train/x.png):
    # fall back to the last two components under root.
    path = Path(listed)
    if path.is_absolute() and path.is_file():
        return path
    direct = root / listed.lstrip("/")
    return direct if direct.is_file() or not path.is_absolute() else root / Path(*path.parts[-2:])


def camvid_samples(root: Path, split: str) -> list[Sample]:
    """SegNet list file `<root>/<split>.txt`: one `image label` pair per line; label 11 is ignored."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"CamVid list file not found: {list_file}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{list_file}:{number}: expected 'image label', got {line!r}")
        samples.append(Sample(_resolve(root, parts[0]), _resolve(root, parts[1])))
    return check_exists(samples, list_file)


SPEC = DatasetSpec(CAMVID_CLASSES, identity_lut(11, (11, IGNORE_INDEX)))
