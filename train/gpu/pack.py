"""A compact, lossless FER-2013 training pack for a GPU machine that only 64 MiB may reach:

    python train/gpu/pack.py make ../shared/data/fer2013/fer2013.zip .carry/fer_pack.npz    # here
    python train/gpu/pack.py unpack .carry/fer_pack.npz /tmp/fer2013                        # there

Every JPEG of the Kaggle zip starts with the same 328-byte header (quantisation and Huffman tables);
the pack stores it once and each file's remaining bytes, so the files come back byte for byte (no
re-encoding, the same pixels) at about 80 % of their size. Train + PublicTest (what training and
model selection read) take about 41 MB, against 51 MB as JPEG files and 70 MB as compressed uint8
arrays; PrivateTest stays behind (reported on the CPU machine after export). `unpack` writes the
Kaggle folder layout, which `feredge train --data DIR` reads. Needs only NumPy.
"""

from __future__ import annotations

import argparse
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

SOS = b"\xff\xda"  # start of scan: every byte before it (and its own segment) is header


def header_of(blob: bytes) -> bytes:
    at = blob.find(SOS)
    return blob[: at + 2 + int.from_bytes(blob[at + 2 : at + 4], "big")] if at >= 0 else b""


def make(zip_path: Path, out: Path, skip: str = "PrivateTest_") -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist()
                 if i.filename.lower().endswith(".jpg") and skip not in i.filename}
    if not files:
        raise SystemExit(f"pack: no JPEG files in {zip_path}")
    header = Counter(header_of(b) for b in files.values()).most_common(1)[0][0]
    shared = [bool(header) and b.startswith(header) for b in files.values()]
    bodies = [b[len(header):] if s else b for b, s in zip(files.values(), shared)]  # others kept whole
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, header=np.frombuffer(header, np.uint8), names=np.array(list(files)),
                        shared=np.array(shared), sizes=np.array([len(b) for b in bodies]),
                        bodies=np.frombuffer(b"".join(bodies), np.uint8))
    return {"files": len(files), "shared_header": sum(shared), "bytes": out.stat().st_size}


def unpack(pack: Path, out_dir: Path) -> int:
    with np.load(pack) as z:
        header, names, shared, sizes, bodies = (z[k] for k in ("header", "names", "shared", "sizes", "bodies"))
    header, ends = header.tobytes(), np.cumsum(sizes)
    for name, s, end, size in zip(names, shared, ends, sizes):
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((header if s else b"") + bodies[end - size : end].tobytes())
    return len(names)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("make")
    m.add_argument("zip", type=Path)
    m.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("out_dir", type=Path)
    a = p.parse_args()
    print(make(a.zip, a.out) if a.verb == "make" else f"{unpack(a.pack, a.out_dir)} files written to {a.out_dir}")
