"""Device profiles: one TOML file per device class, validated by ``schema.Profile``."""

from firmware_configs.schema import (
    PROFILE_DIR,
    Backend,
    Profile,
    ProfileError,
    find_shared_dir,
    load_profile,
)

BUNDLED_PROFILES = ("coral-devboard", "rpi-coral-usb", "jetson-orin", "android-nnapi", "cpu")

__all__ = [
    "BUNDLED_PROFILES",
    "PROFILE_DIR",
    "Backend",
    "Profile",
    "ProfileError",
    "find_shared_dir",
    "load_profile",
]
