"""The few facts of the DICOM data dictionary that the validator needs.

They come from pydicom's generated dictionary, loaded *without importing the pydicom
package*: importing pydicom costs over a second (most of it numpy), which the validator's
worker processes would pay at every start. The dictionary module is plain data.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Final

# Standard VRs (PS3.5 6.2) and those with a 32-bit length in explicit VR (PS3.5 7.1.2).
_STANDARD_VRS: Final = (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    "UC UI UL UN UR US UT UV"
)
_LONG_VRS: Final = "OB OD OF OL OV OW SQ SV UC UN UR UT UV"
VR_ALL: Final = frozenset(vr.encode("ascii") for vr in _STANDARD_VRS.split(" "))
VR_LONG: Final = frozenset(vr.encode("ascii") for vr in _LONG_VRS.split(" "))


def _load_pydicom_dictionary() -> Any:
    loaded = sys.modules.get("pydicom._dicom_dict")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("pydicom")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "_dicom_dict.py"
        data = importlib.util.spec_from_file_location("relaypacs.dicom._pydicom_dict", path)
        if data is not None and data.loader is not None and path.is_file():
            module = importlib.util.module_from_spec(data)
            data.loader.exec_module(module)
            return module
    import pydicom._dicom_dict  # pragma: no cover - unusual installation

    return pydicom._dicom_dict  # pragma: no cover


_module = _load_pydicom_dictionary()
_VRS: Final[dict[int, str]] = {tag: entry[0] for tag, entry in _module.DicomDictionary.items()}
_REPEATERS: Final[list[tuple[int, int, str]]] = [
    (
        int("".join("0" if c == "x" else "F" for c in key), 16),
        int(key.replace("x", "0"), 16),
        entry[0],
    )
    for key, entry in _module.RepeatersDictionary.items()
]
del _module

SQ_TAGS: Final = frozenset(tag for tag, vr in _VRS.items() if vr == "SQ")


def dictionary_vr(tag: int) -> str | None:
    """The VR of a standard tag (repeating groups included), None if unknown."""
    vr = _VRS.get(tag)
    if vr is not None or tag >> 16 & 1:
        return vr
    for mask, value, repeater_vr in _REPEATERS:
        if tag & mask == value:
            return repeater_vr
    return None
