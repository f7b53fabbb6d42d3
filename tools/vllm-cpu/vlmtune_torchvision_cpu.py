"""Lets PyPI's torchvision import beside the CPU torch in .venv-vllm (installed by `make vllm` with a .pth file).

PyPI's Linux x86-64 torchvision wheels are CUDA builds: their C++ ops library (torchvision/_C.so) needs
libc10_cuda.so and libtorch_cuda.so, which the CPU torch does not have, so it fails to load. torchvision catches
that, but then `import torchvision` still dies in torchvision/_meta_registrations.py, whose fake-tensor
registrations for torchvision::nms and torchvision::qnms are not guarded by `_has_ops()`:
`RuntimeError: operator torchvision::nms does not exist`. transformers and vLLM import torchvision for its
Python image transforms (resize, normalize on tensors), which need no C++ op.

This module puts a finder in front of the first `import torchvision`: it tries to load torchvision/_C.so itself,
and only where that fails does it define the schemas of those two ops (no kernels: calling torchvision.ops.nms
raises NotImplementedError, as with any op without a CPU kernel). A torchvision whose _C.so loads (a CPU build)
is left untouched. Nothing is imported at interpreter start but this file; torch is imported at the first
`import torchvision`.
"""

import importlib.abc
import importlib.util
import os
import sys

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIB = None  # the torch.library.Library holding the schemas: it must stay alive


def _prepare() -> None:
    global _LIB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    so = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(so)
        return  # a torchvision built for this torch: nothing to do (torchvision's own load is then a no-op)
    except (OSError, ImportError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        _LIB.define(schema)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _prepare()
        return None  # the ordinary finders import torchvision


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
