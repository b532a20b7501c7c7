"""What the demo trainers share: an atomic output file and the stats they report."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output(out_path: Path, suffix: str = ".tmp"):
    """Yield a temp path beside `out_path` to write to; it becomes `out_path` (mode 0644) only on success.
    `suffix` matters to writers that check the extension (Keras wants '.keras')."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=suffix, dir=out_path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it a normal artifact file
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def training_stats(*, final_loss: float, test_accuracy: float, train_samples: int, test_samples: int, epochs: int,
                   seed: int, seconds: float, out_path: Path) -> dict:
    return {"final_loss": round(final_loss, 6), "test_accuracy": round(test_accuracy, 6),
            "train_samples": int(train_samples), "test_samples": int(test_samples), "epochs": epochs,
            "seed": seed, "seconds": round(seconds, 3), "path": str(out_path)}
