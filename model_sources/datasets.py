"""Deterministic evaluation / calibration sets built from real data installed by packages.

Every loader returns an :class:`EvalSet` whose ``inputs`` map the model's input name to one stacked
float32 C-contiguous array ``[N, ...]``. Calibration sets are just these loaders with other arguments,
e.g. ``fashion_mnist(split="train", limit=256)``.

Sources:

* :func:`imagenet_photos` -- natural colour photos shipped in the ``scikit-image`` wheel
  (``skimage/data``), torchvision-style ImageNet preprocessing, deterministic crop/flip variants,
  no labels.
* :func:`imagenet_calibration` -- calibration views for ImageNet models from the *other* images in
  ``skimage/data`` (never an evaluation photo): random resized crops, flips and colour jitter, seeded.
* :func:`fashion_mnist` -- Debian ``dataset-fashion-mnist`` idx files (override the directory with
  ``$FASHION_MNIST_DIR``), labelled.
* :func:`text_direction_lines` -- text lines segmented from ``skimage/data/page.png``; each crop is
  used upright (label 0, "0") and rotated by 180 degrees (label 1, "180"), preprocessed exactly like
  PaddleOCR / rapidocr's text-direction classifier (``TextClassifier.resize_norm_img``).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .packages import package_file

__all__ = [
    "EvalSet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FASHION_MEAN",
    "FASHION_STD",
    "FASHION_CLASSES",
    "IMAGENET_PHOTOS",
    "IMAGENET_VARIANTS",
    "imagenet_photos",
    "imagenet_preprocess",
    "IMAGENET_CALIBRATION_IMAGES",
    "imagenet_calibration",
    "fashion_mnist",
    "fashion_mnist_dir",
    "read_idx_gz",
    "text_direction_lines",
    "segment_text_lines",
    "cls_resize_norm_img",
]


@dataclass
class EvalSet:
    # Each stacked on axis 0: [N, ...]; or, for samples of different sizes along the recipe's dynamic dimensions
    # (a text line's width), a list of N arrays: evaluated each at its own size.
    inputs: dict[str, np.ndarray | list[np.ndarray]]
    labels: np.ndarray | None  # [N] int64, or None when no labels exist
    ids: list[str]  # one readable id per sample

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in self.inputs.items():
            if len(arr) != n:
                raise ValueError(f"input '{name}' has {len(arr)} samples but there are {n} ids")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels shape {self.labels.shape} != ({n},)")


def _skimage_data(name: str) -> Path:
    try:
        return package_file("skimage", f"data/{name}")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (the photos ship in the scikit-image==0.26.0 wheel)") from e


# --------------------------------------------------------------------------------------------------
# ImageNet photos
# --------------------------------------------------------------------------------------------------

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Natural colour photos in skimage/data (color.png is a synthetic colour wheel, ihc.png microscopy,
# horse.png a silhouette: skipped).
IMAGENET_PHOTOS = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
# variant name -> (resize shorter side to, crop position, horizontal flip)
IMAGENET_VARIANTS = {
    "center": (256, "center", False),
    "hflip": (256, "center", True),
    "crop_tl": (256, "tl", False),
    "crop_tr": (256, "tr", False),
    "crop_bl": (256, "bl", False),
    "crop_br": (256, "br", False),
    "resize320": (320, "center", False),
}


def _resize_shorter(img, size: int):
    from PIL import Image

    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), Image.BILINEAR)


def imagenet_preprocess(img, *, resize: int = 256, size: int = 224, crop: str = "center",
                        hflip: bool = False) -> np.ndarray:
    """torchvision ``Resize(resize) + CenterCrop(size) + ToTensor + Normalize`` on a PIL image.

    ``crop`` is ``"center"`` or a corner ``"tl" | "tr" | "bl" | "br"``. Returns ``[3, size, size]``.
    """
    from PIL import Image

    img = _resize_shorter(img.convert("RGB"), resize)
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} smaller than crop {size}")
    if crop == "center":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    elif crop in ("tl", "tr", "bl", "br"):
        top = 0 if crop[0] == "t" else h - size
        left = 0 if crop[1] == "l" else w - size
    else:
        raise ValueError(f"unknown crop {crop!r}")
    img = img.crop((left, top, left + size, top + size))
    if hflip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def imagenet_photos(input_name: str = "input", *, size: int = 224, photos: tuple[str, ...] | None = None,
                    variants: tuple[str, ...] | None = None, limit: int | None = None) -> EvalSet:
    """Real photos from ``skimage/data`` as an ImageNet batch ``[N, 3, size, size]`` (no labels).

    Each photo yields the variants in :data:`IMAGENET_VARIANTS` (default: all 7 -> 56 samples for the 8
    default photos); ids look like ``"chelsea.center"``, ``"coffee.hflip"``. Order: photo-major.
    ``size`` != 224 scales the resize sizes proportionally (256/224 ratio kept).
    """
    from PIL import Image

    photos = tuple(photos or IMAGENET_PHOTOS)
    variants = tuple(variants or IMAGENET_VARIANTS)
    for v in variants:
        if v not in IMAGENET_VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {sorted(IMAGENET_VARIANTS)}")
    arrays, ids = [], []
    for name in photos:
        with Image.open(_skimage_data(name)) as im:
            im.load()
            for v in variants:
                resize, crop, flip = IMAGENET_VARIANTS[v]
                resize = int(round(resize * size / 224))
                arrays.append(imagenet_preprocess(im, resize=resize, size=size, crop=crop, hflip=flip))
                ids.append(f"{Path(name).stem}.{v}")
    if limit is not None:
        arrays, ids = arrays[:limit], ids[:limit]
    x = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
    return EvalSet(inputs={input_name: x}, labels=None, ids=ids)


# Calibration images for ImageNet models: every other real image in skimage/data, so that a calibration set never
# holds an evaluation photo (IMAGENET_PHOTOS), not even another crop of one. Photos of a camera man, coins, the
# moon, a clock, bricks, grass, gravel and printed text (greyscale), a colour immunohistochemistry slide, microscope
# cells and a retina's microaneurysms. The colour wheel, logo, horse silhouette, chessboards and the scanned page
# are not photos: left out.
IMAGENET_CALIBRATION_IMAGES = (
    "camera.png",
    "coins.png",
    "moon.png",
    "clock_motion.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "text.png",
    "ihc.png",
    "cell.png",
    "microaneurysms.png",
)


def _calibration_view(img, rng: np.random.Generator, *, size: int, grey: bool) -> np.ndarray:
    """One augmented view ``[3, size, size]``: a random resized crop (8-100 % of the area, aspect 3/4-4/3, as
    torchvision's RandomResizedCrop draws it), a horizontal flip half the time, and colour jitter: greyscale photos
    get a random tint (per-channel gains 0.6-1.4, so the colour channels do not all carry one value), colour
    photos brightness, contrast and saturation within +-30 %. Then ImageNet normalisation."""
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    view = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(view, dtype=np.float32) / 255.0
    if grey:
        x = x * rng.uniform(0.6, 1.4, size=3).astype(np.float32)
    else:
        x = x * np.float32(rng.uniform(0.7, 1.3))                                   # brightness
        x = (x - x.mean()) * np.float32(rng.uniform(0.7, 1.3)) + x.mean()          # contrast
        g = x.mean(axis=2, keepdims=True)
        x = g + (x - g) * np.float32(rng.uniform(0.7, 1.3))                         # saturation
    x = (np.clip(x, 0.0, 1.0) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def imagenet_calibration(input_name: str = "input", *, size: int = 224, views: int = 16, seed: int = 0,
                         images: tuple[str, ...] | None = None, limit: int | None = None) -> EvalSet:
    """Calibration samples for ImageNet models ``[N, 3, size, size]`` (no labels), from
    :data:`IMAGENET_CALIBRATION_IMAGES` (none of them an evaluation photo): per image its standard view (resize
    the shorter side to 256/224 * size, centre crop) and ``views - 1`` augmented views (:func:`_calibration_view`),
    drawn from a generator seeded by ``seed`` and the image's position: the same arguments give the same samples.
    Order: image-major; ids ``"camera.view03"``."""
    from PIL import Image

    images = tuple(images or IMAGENET_CALIBRATION_IMAGES)
    overlap = sorted(set(images) & set(IMAGENET_PHOTOS))
    if overlap:
        raise ValueError(f"calibration images {overlap} are evaluation photos (IMAGENET_PHOTOS)")
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    arrays, ids = [], []
    for i, name in enumerate(images):
        rng = np.random.default_rng([seed, i])
        with Image.open(_skimage_data(name)) as im:
            im.load()
            grey = im.mode in ("L", "I", "I;16", "F") or im.mode.startswith("I;")
            rgb = im.convert("RGB")
        arrays.append(imagenet_preprocess(rgb, resize=int(round(256 * size / 224)), size=size))
        ids.append(f"{Path(name).stem}.view00")
        for k in range(1, views):
            arrays.append(_calibration_view(rgb, rng, size=size, grey=grey))
            ids.append(f"{Path(name).stem}.view{k:02d}")
    if limit is not None:
        arrays, ids = arrays[:limit], ids[:limit]
    x = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
    return EvalSet(inputs={input_name: x}, labels=None, ids=ids)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------

FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def lfw_faces(size: int = 48, limit: int | None = None) -> EvalSet:
    """scikit-image's LFW subset (``data/lfw_subset.npy``): 100 face crops then 100 non-faces, 25x25 grayscale,
    resized to `size` and repeated to three channels, normalised as MTCNN does ((x - 127.5) / 128); labelled
    1 = face, 0 = not a face (the order of O-Net's face probability output)."""
    from PIL import Image

    crops = np.load(package_file("skimage", "data/lfw_subset.npy"))
    labels = np.r_[np.ones(len(crops) // 2), np.zeros(len(crops) - len(crops) // 2)].astype(np.int64)
    images = []
    for a in crops:
        g = np.asarray(Image.fromarray((a * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR),
                       dtype=np.float32)
        images.append(np.stack([g, g, g]))
    x = ((np.stack(images) - 127.5) / 128.0).astype(np.float32)
    ids = [f"{'face' if y else 'nonface'}{i:03d}" for i, y in enumerate(labels)]
    if limit is not None:
        idx = np.linspace(0, len(x) - 1, limit).round().astype(int)
        x, labels, ids = x[idx], labels[idx], [ids[i] for i in idx]
    return EvalSet(inputs={"input": np.ascontiguousarray(x)}, labels=labels, ids=ids)


def face_labels() -> list[str]:
    """The classes of O-Net's face probability output, in order."""
    return ["not a face", "face"]


def fashion_labels() -> list[str]:
    """Class names of the Fashion-MNIST logits, in order (published with the model for apps to show)."""
    return list(FASHION_CLASSES)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (torchvision / Keras) order, from the data files the
    timm wheel ships (synset ids sorted, and their lemmas); the first lemma of each class."""
    synsets = package_file("timm", "data/_info/imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in
                  package_file("timm", "data/_info/imagenet_synset_to_lemma.txt").read_text().splitlines() if "\t" in line)
    if len(synsets) != 1000:
        raise ValueError(f"expected 1000 ImageNet synsets, found {len(synsets)}")
    return [lemmas[s].split(",")[0].strip() for s in synsets]
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("FASHION_MNIST_DIR") or FASHION_DEFAULT_DIR)


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Read a gzipped IDX file (ubyte data only) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    if data[2] != 0x08:
        raise ValueError(f"{path}: unsupported IDX dtype code {data[2]:#x} (only ubyte)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def fashion_normalize(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` -> float32 ``[N, 1, 28, 28]``: /255 then (x - 0.2860) / 0.3530."""
    x = images_u8.astype(np.float32)[:, None, :, :] / 255.0
    return np.ascontiguousarray((x - FASHION_MEAN) / FASHION_STD, dtype=np.float32)


def fashion_mnist(input_name: str = "input", *, split: str = "test", limit: int | None = None) -> EvalSet:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as ``[N, 1, 28, 28]`` float32 + int64 labels.

    ``limit`` keeps the first ``limit`` samples (file order). ids: ``"test/000042"``.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    d = fashion_mnist_dir()
    img_f, lbl_f = (d / f for f in _FASHION_FILES[split])
    for p in (img_f, lbl_f):
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file '{p}' not found: install the Debian package "
                f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or set FASHION_MNIST_DIR"
            )
    images = read_idx_gz(img_f)
    labels = read_idx_gz(lbl_f).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape} / {labels.shape} in {d}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = fashion_normalize(images)
    ids = [f"{split}/{i:06d}" for i in range(len(labels))]
    return EvalSet(inputs={input_name: x}, labels=np.ascontiguousarray(labels), ids=ids)


# --------------------------------------------------------------------------------------------------
# Text direction (PaddleOCR / rapidocr cls)
# --------------------------------------------------------------------------------------------------

CLS_MODEL_PACKAGE = "rapidocr_onnxruntime"
CLS_MODEL_RELPATH = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLS_IMAGE_SHAPE = (3, 48, 192)
CLS_LABELS = ("0", "180")
TEXT_IMAGES = ("page.png",)


def _cv2_resize_linear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """numpy equivalent of ``cv2.resize(img, (out_w, out_h))`` (INTER_LINEAR, half-pixel centres,
    no antialiasing, border replicate) for uint8 ``[H, W]`` or ``[H, W, C]``; result rounded to uint8."""
    h, w = img.shape[:2]

    def coords(n_out: int, n_in: int):
        f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        f0 = np.floor(f)
        frac = f - f0
        i0 = np.clip(f0.astype(np.int64), 0, n_in - 1)
        i1 = np.clip(f0.astype(np.int64) + 1, 0, n_in - 1)
        return i0, i1, frac

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    src = img.astype(np.float64)
    if src.ndim == 2:
        src = src[:, :, None]
    fx_ = fx[None, :, None]
    top = src[y0][:, x0] * (1 - fx_) + src[y0][:, x1] * fx_
    bot = src[y1][:, x0] * (1 - fx_) + src[y1][:, x1] * fx_
    out = top * (1 - fy[:, None, None]) + bot * fy[:, None, None]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out if img.ndim == 3 else out[:, :, 0]


def cls_resize_norm_img(img: np.ndarray, image_shape: tuple[int, int, int] = CLS_IMAGE_SHAPE) -> np.ndarray:
    """Port of rapidocr ``TextClassifier.resize_norm_img`` (PaddleOCR cls preprocessing).

    ``img``: uint8 ``[H, W, 3]`` (BGR order as cv2 reads it; our text images are grey so the order is
    moot). Resize to height 48 keeping the ratio (width ``ceil(48*w/h)``, capped at 192), /255,
    (x-0.5)/0.5, zero-pad on the right to 192. Returns float32 ``[3, 48, 192]``.
    """
    img_c, img_h, img_w = image_shape
    h, w = img.shape[:2]
    ratio = w / float(h)
    resized_w = img_w if math.ceil(img_h * ratio) > img_w else int(math.ceil(img_h * ratio))
    resized = _cv2_resize_linear(img, resized_w, img_h).astype(np.float32)
    if img_c == 1:
        resized = resized / 255
        resized = resized[np.newaxis, :] if resized.ndim == 2 else resized[np.newaxis, :, :, 0]
    else:
        resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padding_im = np.zeros((img_c, img_h, img_w), dtype=np.float32)
    padding_im[:, :, :resized_w] = resized
    return padding_im


def _ink_mask(gray: np.ndarray, window: int = 31, offset: float = 25.0) -> np.ndarray:
    """Dark-on-light ink mask with a local-mean threshold (copes with uneven illumination)."""
    from scipy import ndimage as ndi

    g = gray.astype(np.float32)
    bg = ndi.uniform_filter(g, window, mode="reflect")
    return g < bg - offset


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of True in a 1-D boolean array."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def segment_text_lines(gray: np.ndarray, *, min_height: int = 6, core_frac: float = 0.2,
                       pad_frac: float = 0.35) -> list[tuple[int, int, int, int]]:
    """Text line boxes ``(top, bottom, left, right)`` (half-open) via a horizontal projection profile.

    Rows whose ink count exceeds ``core_frac`` of the maximum form line cores; each core is padded by
    ``pad_frac`` of its height (never past the midpoint to a neighbouring core); left/right are the
    ink extent inside the band (small margin added).
    """
    ink = _ink_mask(gray)
    prof = ink.sum(axis=1).astype(np.float64)
    if prof.max() <= 0:
        return []
    cores = [(a, b) for a, b in _runs(prof > core_frac * prof.max())]
    merged: list[list[int]] = []
    for a, b in cores:  # merge cores split by a 1-2 row dip
        if merged and a - merged[-1][1] <= 2:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    merged = [c for c in merged if c[1] - c[0] >= min_height]
    H, W = gray.shape
    boxes = []
    for i, (a, b) in enumerate(merged):
        pad = max(2, int(round(pad_frac * (b - a))))
        lo = 0 if i == 0 else (merged[i - 1][1] + a) // 2
        hi = H if i == len(merged) - 1 else (b + merged[i + 1][0]) // 2
        top, bot = max(lo, a - pad), min(hi, b + pad)
        cols = np.flatnonzero(ink[top:bot].sum(axis=0) > 0)
        if cols.size == 0:
            continue
        margin = max(2, (bot - top) // 4)
        left, right = max(0, int(cols[0]) - margin), min(W, int(cols[-1]) + 1 + margin)
        boxes.append((int(top), int(bot), left, right))
    return boxes


def _split_points(col_ink: np.ndarray, parts: int) -> list[int]:
    """Cut a line into ``parts`` pieces at columns near equal spacing, snapped to ink-free gaps."""
    W = col_ink.shape[0]
    cuts = [0]
    for k in range(1, parts):
        target = int(round(k * W / parts))
        window = max(4, W // (4 * parts))
        lo, hi = max(1, target - window), min(W - 1, target + window)
        cand = np.arange(lo, hi)
        if cand.size:
            # prefer the emptiest column, ties broken by distance to the target
            score = col_ink[cand] * 1000 + np.abs(cand - target)
            target = int(cand[np.argmin(score)])
        cuts.append(target)
    cuts.append(W)
    return cuts


def text_direction_lines(input_name: str = "x", *, limit: int | None = None,
                         splits: tuple[int, ...] = (1, 2, 3)) -> EvalSet:
    """Labelled text-direction set for rapidocr's ``ch_ppocr_mobile_v2.0_cls_infer.onnx``.

    Text lines are segmented from ``skimage/data/page.png`` (a photographed book page). Each line is
    used whole and cut into 2 and 3 pieces (``splits``) at word gaps; every crop appears upright
    (label 0, class "0") followed by its 180-degree rotation (label 1, class "180"). Inputs are
    ``[N, 3, 48, 192]`` float32 preprocessed by :func:`cls_resize_norm_img`. ids:
    ``"page.L2.p1of3.rot0"`` / ``"...rot180"``. ``limit`` keeps the first ``limit`` samples (pairs
    stay adjacent, so an even limit keeps the classes balanced).
    """
    arrays, labels, ids = [], [], []
    for stem, rgb in page_text_crops(splits):
        for rot, label in ((0, 0), (180, 1)):
            img = rgb if rot == 0 else np.ascontiguousarray(rgb[::-1, ::-1])
            arrays.append(cls_resize_norm_img(img))
            labels.append(label)
            ids.append(f"{stem}.rot{rot}")
    if limit is not None:
        arrays, labels, ids = arrays[:limit], labels[:limit], ids[:limit]
    x = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
    return EvalSet(inputs={input_name: x}, labels=np.asarray(labels, dtype=np.int64), ids=ids)


def page_text_crops(splits: tuple[int, ...] = (1, 2, 3)):
    """Upright text crops from ``skimage/data/page.png``: each segmented line whole and cut into 2 and 3 pieces
    (`splits`) at word gaps, margins trimmed; yields (id, uint8 [H, W, 3])."""
    from PIL import Image

    for name in TEXT_IMAGES:
        with Image.open(_skimage_data(name)) as im:
            gray = np.asarray(im.convert("L"))
        ink = _ink_mask(gray)
        boxes = segment_text_lines(gray)
        if not boxes:
            raise ValueError(f"no text lines found in skimage/data/{name}")
        for li, (top, bot, left, right) in enumerate(boxes):
            line = gray[top:bot, left:right]
            col_ink = ink[top:bot, left:right].sum(axis=0)
            for parts in splits:
                cuts = _split_points(col_ink, parts)
                for pi in range(parts):
                    a, b = cuts[pi], cuts[pi + 1]
                    crop = line[:, a:b]
                    # trim empty margins but keep a little border, skip pieces without text
                    cols = np.flatnonzero(col_ink[a:b] > 0)
                    if cols.size < 4 or (b - a) < (bot - top):
                        continue
                    m = max(2, (bot - top) // 4)
                    crop = crop[:, max(0, cols[0] - m): cols[-1] + 1 + m]
                    yield (f"{Path(name).stem}.L{li}.p{pi + 1}of{parts}",
                           np.ascontiguousarray(np.repeat(crop[:, :, None], 3, axis=2)))


# PaddleOCR's text recognizer (PP-OCRv4, CTC head) as rapidocr ships it; it takes [N, 3, 48, W] and gives per
# 4-pixel column the probabilities of blank + its 6623 characters + space.
REC_MODEL_RELPATH = "models/ch_PP-OCRv4_rec_infer.onnx"
REC_IMAGE_SHAPE = (3, 48, 320)


def text_recognition_lines(input_name: str = "x", *, width: int = REC_IMAGE_SHAPE[2],
                           limit: int | None = None, own_width: bool = False) -> EvalSet:
    """The upright crops of :func:`page_text_crops`, preprocessed like rapidocr's ``TextRecognizer``: height 48,
    width by the aspect ratio, /255, (x-0.5)/0.5, zero-padded on the right to `width` (a longer line squeezed into
    it). With `own_width`, each line as rapidocr feeds it one at a time: padded to `width` when shorter, at its
    own width (int(48 * w / h)) when longer, never squeezed: a list of samples of different widths. No
    transcriptions exist for the page: recognizers are judged by agreement with the native model's decoding."""
    arrays, ids = [], []
    c, h, _ = REC_IMAGE_SHAPE
    for stem, rgb in page_text_crops():
        w = max(width, int(h * rgb.shape[1] / rgb.shape[0])) if own_width else width
        arrays.append(np.ascontiguousarray(cls_resize_norm_img(rgb, (c, h, w)), dtype=np.float32))
        ids.append(stem)
    if limit is not None:
        arrays, ids = arrays[:limit], ids[:limit]
    return EvalSet(inputs={input_name: arrays if own_width else np.stack(arrays)}, labels=None, ids=ids)


def text_recognition_labels() -> list[str]:
    """The recognizer's classes in output order, as PaddleOCR decodes them: "blank" (the CTC blank), the
    characters stored in the model file's metadata (`character`), then a space."""
    import onnx

    model = onnx.load(str(package_file(CLS_MODEL_PACKAGE, REC_MODEL_RELPATH)), load_external_data=False)
    chars = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ["blank", *chars, " "]


def text_cls_model_path() -> Path:
    """Path of rapidocr's text-direction classifier ONNX file."""
    return package_file(CLS_MODEL_PACKAGE, CLS_MODEL_RELPATH)


# ------------------------------------------------------------------------------------------------ sentences

# Modules whose docstrings give the sentences: many short, related statements (paths, maths, archives, time), so
# nearest neighbours are close calls that a lossy variant can reorder.
DOC_MODULES = ("math", "os.path", "shutil", "json", "re", "random", "statistics", "string", "textwrap", "datetime",
               "collections", "itertools", "functools", "pathlib", "zipfile", "gzip", "csv", "socket", "time",
               "calendar", "heapq", "bisect", "copy", "base64", "hashlib", "uuid", "difflib", "fnmatch", "glob",
               "tempfile")


def python_doc_sentences(modules: tuple[str, ...] = DOC_MODULES, *, min_words: int = 6,
                         max_words: int = 30) -> list[tuple[str, str]]:
    """Real English sentences written by people: the first sentence of the docstring of each public callable of
    `modules` in Python's standard library (deterministic for one Python version), as (id, sentence)."""
    import importlib
    import inspect
    import re

    out, seen = [], set()
    for m in modules:
        mod = importlib.import_module(m)
        for name in sorted(dir(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or not callable(obj):
                continue
            para = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
            if not para or ">>>" in para or "(" in para.split(" ")[0]:
                continue  # a signature line, or an example, is not a sentence
            first = re.split(r"(?<=[.!?])\s", para)[0]
            if min_words <= len(first.split()) <= max_words and first.endswith(".") and first not in seen:
                seen.add(first)
                out.append((f"{m}.{name}", first))
    return out


def tokenized_sentences(assets: dict, *, max_length: int = 64, limit: int | None = 64) -> EvalSet:
    """Sentences (:func:`python_doc_sentences`, `limit` of them evenly spaced) tokenized with the recipe's published
    tokenizer (`assets["tokenizer"]`, a Hugging Face tokenizer.json) exactly as an app would: padded and truncated
    to `max_length`; inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` [N, max_length] int64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets["tokenizer"]))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length)
    items = python_doc_sentences()
    if limit is not None and limit < len(items):
        items = [items[i] for i in np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))]
    enc = tok.encode_batch([s for _, s in items])
    arr = {k: np.ascontiguousarray([getattr(e, a) for e in enc], dtype=np.int64)
           for k, a in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}
    return EvalSet(inputs=arr, labels=None, ids=[i for i, _ in items])
