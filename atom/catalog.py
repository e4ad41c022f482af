"""What is known about the fixed-size datasets before a byte of them is read: class counts,
image shapes, split sizes and download sizes. Torch-free, so the workflow files (through the
pipeline's params checks and preflight) can refuse an IPC or a validation split too large for
a dataset, or a disk too small for it, before anything is downloaded.

An ImageFolder's sizes are known only once its files are listed (the download stage checks
them then); digits' are scikit-learn's bundled copy (1,797 images, a test checks the counts
against it).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetFacts", "FACTS", "DIGITS_CLASS_COUNTS", "MiB"]

MiB = 1 << 20

# images per class in scikit-learn's digits (train + test: the loader splits them by test_fraction)
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset's fixed sizes. ``train_per_class`` is None where classes differ in size
    (digits: :data:`DIGITS_CLASS_COUNTS`); ``archive_bytes`` / ``extracted_bytes`` are the
    official download and what it extracts to (0: nothing is downloaded)."""

    classes: int
    channels: int
    height: int
    width: int
    n_train: int
    n_test: int
    train_per_class: int | None
    archive_bytes: int = 0
    extracted_bytes: int = 0

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """(training images, test images, classes, channels, height, width)."""
        return (self.n_train, self.n_test, self.classes, self.channels, self.height, self.width)

    def describe(self, name: str) -> str:
        return (f"{name}: {self.n_train:,}/{self.n_test:,} {self.height}x{self.width} "
                f"{'RGB' if self.channels == 3 else 'grayscale'} images, {self.classes} classes")


FACTS = {
    # the digits split's sizes depend on test_fraction: n_train/n_test are those of the default 0.2
    "digits": DatasetFacts(10, 1, 8, 8, 1438, 359, None),
    "cifar10": DatasetFacts(10, 3, 32, 32, 50000, 10000, 5000, 170_498_071, 190 * MiB),
    "cifar100": DatasetFacts(100, 3, 32, 32, 50000, 10000, 500, 169_001_437, 190 * MiB),
    "tinyimagenet": DatasetFacts(200, 3, 64, 64, 100000, 10000, 500, 248_100_043, 500 * MiB),
}
