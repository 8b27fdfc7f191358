"""Predict the bytes of the .pt that ``fileformat.save_pt`` writes, without torch (the API uses it).

The file is a stored zip (root folder ``archive``): ``data.pkl``, one ``data/<n>`` entry
per tensor (64-byte aligned, as torch aligns them) and ``version``. Entry overheads are
fixed by the zip format; the pickle is modelled opcode by opcode as torch.save writes our
dict with pickle protocol 2. Calibrated against real files in tests/core (exact).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.hypernetwork.options import HypernetworkOptions

_ZIP_LOCAL = 30  # local file header without name and extra
_ZIP_CENTRAL = 46  # central directory record without name
_ZIP_END = 22  # end of central directory record
_ZIP_ALIGN = 64
_ZIP_ROOT = "archive"
_VERSION_BYTES = 2  # torch's "3\n"


def estimate_pt_bytes(options: HypernetworkOptions, name: str) -> int:
    """Bytes of the .pt holding ``options`` (already in the layout to write) under ``name``."""
    tensor_bytes: list[int] = []
    for width in options.enable_sizes:
        for _module in ("k", "v"):
            tensor_bytes.extend(4 * math.prod(s) for s in options.state_dict_shapes(width).values())
    entries = [("data.pkl", _PickleModel(options, name).size(), False)]
    entries += [(f"data/{i}", size, True) for i, size in enumerate(tensor_bytes)]
    entries.append(("version", _VERSION_BYTES, False))
    offset = 0
    central = 0
    for entry, size, aligned in entries:
        full = len(f"{_ZIP_ROOT}/{entry}".encode())
        header = _ZIP_LOCAL + full
        if aligned and (offset + header) % _ZIP_ALIGN:
            # The padding lives in an extra field: 4 bytes of field header plus the pad.
            header += 4 + (-(offset + header + 4)) % _ZIP_ALIGN
        offset += header + size
        central += _ZIP_CENTRAL + full
    return offset + central + _ZIP_END


class _PickleModel:
    """Counts the bytes of data.pkl; every memoised object takes the next memo slot."""

    def __init__(self, options: HypernetworkOptions, name: str) -> None:
        self.options = options
        self.name = name
        self.memo = 0
        self.slots: dict[str, int] = {}

    def put(self) -> int:
        """BINPUT (2 bytes) below slot 256, LONG_BINPUT (5 bytes) from there on."""
        slot = self.memo
        self.memo += 1
        return 2 if slot < 256 else 5

    @staticmethod
    def get(slot: int) -> int:
        return 2 if slot < 256 else 5

    @staticmethod
    def integer(value: int) -> int:
        if 0 <= value < 256:
            return 2  # BININT1
        if 0 <= value < 65536:
            return 3  # BININT2
        return 5  # BININT

    def string(self, text: str) -> int:
        return 5 + len(text.encode()) + self.put()  # BINUNICODE, BINPUT

    def global_(self, key: str, module: str, qualname: str) -> int:
        """A GLOBAL the first time (then memoised), a BINGET afterwards."""
        if key in self.slots:
            return self.get(self.slots[key])
        self.slots[key] = self.memo
        return 1 + len(module) + len(qualname) + 2 + self.put()

    def constant(self, key: str, text: str) -> int:
        """A string torch passes as the same object every time (memoised once)."""
        if key in self.slots:
            return self.get(self.slots[key])
        self.slots[key] = self.memo
        return self.string(text)

    def tensor(self, storage_key: int, shape: tuple[int, ...]) -> int:
        """torch._utils._rebuild_tensor_v2(persistent storage, 0, size, stride, False, OrderedDict())."""
        total = self.global_("rebuild", "torch._utils", "_rebuild_tensor_v2") + 2  # MARK, MARK
        total += self.constant("storage", "storage") + self.global_("float", "torch", "FloatStorage")
        total += self.string(str(storage_key)) + self.constant("cpu", "cpu")
        total += self.integer(math.prod(shape)) + 1 + self.put() + 1  # numel, TUPLE, BINPUT, BINPERSID
        total += 2  # storage offset 0
        strides = (shape[1], 1) if len(shape) == 2 else (1,)
        for dims in (shape, strides):
            total += sum(self.integer(d) for d in dims) + 1 + self.put()  # TUPLE1/2, BINPUT
        total += 1  # NEWFALSE: requires_grad
        total += self.global_("ordered", "collections", "OrderedDict") + 2 + self.put()  # (), REDUCE
        return total + 1 + self.put() + 1 + self.put()  # TUPLE, BINPUT, REDUCE, BINPUT

    def size(self) -> int:
        """Total bytes of data.pkl."""
        total = 2 + 1 + self.put() + 1  # PROTO, EMPTY_DICT, BINPUT, MARK
        storage_key = 0
        for width in self.options.enable_sizes:
            total += self.integer(width)
            shapes = self.options.state_dict_shapes(width)
            # The k and v dicts share the key string objects, so v's keys are memo references.
            key_slots: dict[str, int] = {}
            for module in ("k", "v"):
                total += 1 + self.put() + 1  # EMPTY_DICT, BINPUT, MARK
                for key, shape in shapes.items():
                    if module == "k":
                        key_slots[key] = self.memo
                        total += self.string(key)
                    else:
                        total += self.get(key_slots[key])
                    total += self.tensor(storage_key, shape)
                    storage_key += 1
                total += 1  # SETITEMS
            total += 1 + self.put()  # TUPLE2, BINPUT
        return total + self._metadata() + 2  # SETITEMS, STOP

    def _metadata(self) -> int:
        n = len(self.options.layer_structure)

        def float_list() -> int:
            return 1 + self.put() + 1 + 9 * n + 1  # EMPTY_LIST, BINPUT, MARK, BINFLOATs, APPENDS

        # Values in the order written; step 0 and None values as a new file has them.
        values = (
            ("step", lambda: 2),
            ("name", lambda: self.string(self.name)),
            ("layer_structure", float_list),
            ("activation_func", lambda: self.string(self.options.activation_func)),
            ("is_layer_norm", lambda: 1),
            ("weight_initialization", lambda: self.string(self.options.weight_initialization)),
            ("sd_checkpoint", lambda: 1),
            ("sd_checkpoint_name", lambda: 1),
            ("activate_output", lambda: 1),
            ("use_dropout", lambda: 1),
            ("dropout_structure", float_list),
            ("last_layer_dropout", lambda: 1),
            ("optional_info", lambda: 1),
        )
        return sum(self.string(key) + value() for key, value in values)
