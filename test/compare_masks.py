"""Compare every expected mask with the written one of the same name: the same names, pixel type uint8, identical
geometry, Dice >= 0.999. Used by test/container_test.sh (in the image) and test/gc_runtime.py.

    python test/compare_masks.py EXPECTED_DIR OUTPUT_DIR SOCKET    (the folders hold images/<SOCKET>/*.mha)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def compare_masks(expected_dir: Path, output_dir: Path, socket: str) -> bool:
    expected = sorted((Path(expected_dir) / "images" / socket).glob("*.mha"))
    written = sorted((Path(output_dir) / "images" / socket).glob("*.mha"))
    ok = bool(expected) and [p.name for p in expected] == [p.name for p in written]
    if not ok:
        print(f"   expected {[p.name for p in expected]}, written {[p.name for p in written]}")
    for want_file in expected:
        got_file = Path(output_dir) / "images" / socket / want_file.name
        if not got_file.exists():
            continue
        want, got = sitk.ReadImage(str(want_file)), sitk.ReadImage(str(got_file))
        same_grid = (want.GetSize() == got.GetSize() and got.GetPixelID() == sitk.sitkUInt8
                     and np.allclose(want.GetSpacing(), got.GetSpacing(), rtol=0, atol=1e-6)
                     and np.allclose(want.GetOrigin(), got.GetOrigin(), rtol=0, atol=1e-6)
                     and np.allclose(want.GetDirection(), got.GetDirection(), rtol=0, atol=1e-6))
        a, b = sitk.GetArrayViewFromImage(want) > 0, sitk.GetArrayViewFromImage(got) > 0
        total = int(a.sum() + b.sum())
        dice = 1.0 if total == 0 else 2 * int((a & b).sum()) / total
        print(f"   {want_file.name}: Dice {dice:.5f} ({int(a.sum())} expected, {int(b.sum())} written tumor voxels), "
              f"geometry {'identical' if same_grid else 'DIFFERENT'}")
        ok = ok and same_grid and dice >= 0.999
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("expected", type=Path, help="folder with images/<SOCKET>/*.mha, the expected masks")
    parser.add_argument("output", type=Path, help="folder with images/<SOCKET>/*.mha, the written masks")
    parser.add_argument("socket", help="the output socket, e.g. pancreatic-tumor-segmentation")
    args = parser.parse_args()
    sys.exit(0 if compare_masks(args.expected, args.output, args.socket) else 1)
