class UpdateFormatError(ValueError):
    """An update body that cannot be applied to the given base model."""
