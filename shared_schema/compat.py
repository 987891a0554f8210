"""What the edge package needs from Python 3.11 on 3.10 as well (JetPack 6 ships 3.10)."""

from __future__ import annotations

import datetime
import enum
import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum
    from typing import Self

    import tomllib
else:  # pragma: no cover - exercised by the bundle test on a 3.10 interpreter
    import tomli as tomllib
    from typing_extensions import Self

    class StrEnum(str, enum.Enum):
        """Members are their values as strings, in f-strings and str() alike."""

        def __str__(self) -> str:
            return str(self.value)

        __format__ = str.__format__


UTC = datetime.timezone.utc

__all__ = ["UTC", "Self", "StrEnum", "tomllib"]
