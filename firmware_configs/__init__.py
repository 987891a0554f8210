"""Device profiles: one TOML file per device class, validated by ``edge_runtime.profile``.

This package holds data only and imports nothing of the project.
"""

from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent
BUNDLED_PROFILES = ("coral-devboard", "rpi-coral-usb", "jetson-orin", "android", "cpu")

__all__ = ["BUNDLED_PROFILES", "PROFILE_DIR"]
