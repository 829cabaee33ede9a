"""Carry an exported model at half its size to a machine that takes at most 64 MiB, and back.

    python dev/onnx_half.py pack FOLDER ROLE OUT_FOLDER    # here: OUT_FOLDER/ROLE.half.onnx + ROLE.json
    python dev/onnx_half.py unpack FOLDER                  # there: every ROLE.half.onnx -> ROLE.onnx

pack stores the float32 weights of FOLDER/ROLE.onnx as float16 (the file is a container, not a
runnable model). unpack turns them back into float32: the weights are the originals rounded to
float16 (relative error <= 2^-11), so the model is a close copy, not the same one. unpack writes
the new file's sha256 into ROLE.json and records the rounding there ("transport"), so the
manifest check still holds and nobody takes the copy for the original. For networks that only
help training (a frozen UNETR, the masking network that makes training masks), never for the
network being trained or shipped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pedq_deploy.io.bids import write_json_atomic
from pedq_deploy.io.checksum import sha256_file


class HalfError(Exception):
    """Bad input: reported in one line, exit code 2."""


KEY = "pedq_half"  # metadata: the names of the initializers stored as float16


def _replace_atomic(save, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


def pack(folder: Path, role: str, out: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    src, manifest = folder / f"{role}.onnx", folder / f"{role}.json"
    if not src.is_file() or not manifest.is_file():
        raise HalfError(f"{src} or {manifest} not found")
    model = onnx.load(str(src))
    names = []
    for i, init in enumerate(model.graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            if np.abs(arr).max(initial=0) > np.finfo(np.float16).max:
                raise HalfError(f"{init.name} has weights beyond float16's range")
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
            names.append(init.name)
    model.metadata_props.add(key=KEY, value=json.dumps(names))
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{role}.half.onnx"
    _replace_atomic(lambda p: onnx.save(model, str(p)), dest)
    _replace_atomic(lambda p: p.write_bytes(manifest.read_bytes()), out / f"{role}.json")
    return dest


def unpack(folder: Path) -> list[Path]:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    done = []
    for half in sorted(folder.glob("*.half.onnx")):
        role = half.name[: -len(".half.onnx")]
        model = onnx.load(str(half))
        meta = {p.key: p.value for p in model.metadata_props}
        if KEY not in meta:
            raise HalfError(f"{half} was not written by onnx_half.py pack")
        names = set(json.loads(meta.pop(KEY)))
        for i, init in enumerate(model.graph.initializer):
            if init.name in names:
                arr = numpy_helper.to_array(init).astype(np.float32)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        dest = folder / f"{role}.onnx"
        _replace_atomic(lambda p: onnx.save(model, str(p)), dest)
        manifest = folder / f"{role}.json"
        record = json.loads(manifest.read_text())
        record["transport"] = {
            "float16_rounded": True,
            "original_sha256": record.get("sha256"),
            "note": "weights rounded to float16 to travel (dev/onnx_half.py): a close copy of the original",
        }
        record["sha256"] = sha256_file(dest)
        write_json_atomic(manifest, record)
        half.unlink()
        done.append(dest)
    return done


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 4 and argv[0] == "pack":
            print(pack(Path(argv[1]), argv[2], Path(argv[3])))
            return 0
        if len(argv) == 2 and argv[0] == "unpack":
            for p in unpack(Path(argv[1])):
                print(p)
            return 0
    except HalfError as exc:
        print(f"onnx_half: error: {exc}", file=sys.stderr)
        return 2
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
