"""``backend = "edgetpu"``: LiteRT with the Coral Edge TPU delegate (libedgetpu).

The model must be compiled for the Edge TPU (edgetpu_compiler); ops the compiler left on the CPU
run there with ``threads``. Where Coral's own pycoral is installed (it provides
``pycoral.utils.edgetpu``), its ``make_interpreter`` builds the interpreter, pairing libedgetpu
with the tflite_runtime it was built for. The unrelated PyPI project named "pycoral" has no such
module and is never used. pycoral picks the library itself and leaves ``threads`` at its default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from edge_runtime.backends.base import CPU_FALLBACK, BackendConfig, BackendUnavailable
from edge_runtime.backends.litert import (
    Library,
    LiteRtEngine,
    load_delegate,
    new_interpreter,
    prepared,
)

_INSTALL = "install the Edge TPU runtime (libedgetpu1-std, from Coral's apt repository)"
# How every TFLite Python runtime's load_delegate reports a delegate that would not load.
_DELEGATE_FAILED = "Failed to load delegate from"


def _pycoral_make_interpreter() -> Callable[..., Any] | None:
    try:
        from pycoral.utils.edgetpu import make_interpreter
    except ImportError:
        return None
    return make_interpreter


class EdgeTpuConfig(BackendConfig):
    """``backend = "edgetpu"``: a Coral Edge TPU (USB, PCIe or the Dev Board's)."""

    backend: Literal["edgetpu"] = "edgetpu"
    library: Library = "libedgetpu.so.1"
    # "usb", "usb:1", "pci", "pci:0" or ":0" (the n-th Edge TPU); None: the first one found.
    device: str | None = Field(None, pattern=r"^(?:(?:usb|pci)(?::\d+)?|:\d+)$")

    def open(self, model: bytes) -> LiteRtEngine:
        make = _pycoral_make_interpreter()
        if make is None:
            options = {} if self.device is None else {"device": self.device}
            delegate = load_delegate(self.library, options, _INSTALL)
            return LiteRtEngine(new_interpreter(model, self.threads, [delegate]), self)
        return LiteRtEngine(prepared(lambda: self._pycoral(make, model)), self)

    def _pycoral(self, make: Callable[..., Any], model: bytes) -> Any:
        try:
            return make(model, device=self.device)
        except (OSError, ValueError) as exc:
            # Any other ValueError is about the model, and `prepared` reports it as such.
            if isinstance(exc, ValueError) and not str(exc).startswith(_DELEGATE_FAILED):
                raise
            raise BackendUnavailable(
                f"pycoral could not open the Edge TPU (device {self.device or 'any'}): {exc};"
                f" check it is connected, {_INSTALL}, or {CPU_FALLBACK}"
            ) from exc
