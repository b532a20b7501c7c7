"""Browser model release pipeline. `luigi --module pipeline BuildAll` runs everything (see README)."""
from pipeline.tasks import BuildAll  # noqa: F401  (luigi finds tasks by importing this module)
