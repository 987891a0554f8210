class UpdateFormatError(ValueError):
    """An update body that cannot be applied to the given base model."""


class ResultHashMismatch(UpdateFormatError):
    """A body that applies, but to a file other than the one its update promises."""
