"""Browser model release pipeline. `luigi --module pipeline BuildAll` runs everything (see README)."""
import logging as _logging

# One place for library warnings (converters, quantizers): a root handler at WARNING. Libraries that call
# logging.basicConfig() or log on the root logger would otherwise add a second handler, and Luigi's own
# lines (which it prints through its handler) would then appear twice.
if not _logging.getLogger().handlers:
    _h = _logging.StreamHandler()
    _h.setFormatter(_logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    _logging.getLogger().addHandler(_h)
    _logging.getLogger().setLevel(_logging.WARNING)
_logging.getLogger("luigi-interface").propagate = False

from pipeline.tasks import BuildAll  # noqa: E402,F401  (luigi finds tasks by importing this module)
