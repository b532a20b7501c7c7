"""What the demo trainers share: the stats they report. (They write their files with pipeline.fsutil.atomic_file.)"""
from __future__ import annotations

from pathlib import Path


def training_stats(*, final_loss: float, test_accuracy: float, train_samples: int, test_samples: int, epochs: int,
                   seed: int, seconds: float, out_path: Path) -> dict:
    return {"final_loss": round(final_loss, 6), "test_accuracy": round(test_accuracy, 6),
            "train_samples": int(train_samples), "test_samples": int(test_samples), "epochs": epochs,
            "seed": seed, "seconds": round(seconds, 3), "path": str(out_path)}
