"""Exception types. Each carries a one-paragraph message meant for a human."""


class HarnessError(Exception):
    """Base class: a problem the user can act on (bad input, failed build...)."""


class InfraError(HarnessError):
    """The host cannot do the job (QEMU missing, out of disk, broken key): not a test failure."""


class SourceError(HarnessError):
    """A kernel source spec that cannot be resolved."""


class PatchError(HarnessError):
    """A patch series that does not parse or apply."""


class ConfigError(HarnessError):
    """A config fragment that is malformed or whose options did not land in .config."""


class BuildError(HarnessError):
    """make failed."""


class BootError(HarnessError):
    """The guest did not come up."""
