"""Batches on the training device, from either kind of split, in an order the engine gives.

``source.train(order, batch_size, start)`` yields ``(x, idx)``: ``x`` ``(B, C, H, W)`` float
in ``[0, 1]`` on the device, augmented, and ``idx`` ``(B,)`` the dataset indices (the engine
looks the possibly noisy labels up by index). ``start`` skips batches already trained on,
so an epoch interrupted mid-way resumes at the next batch; ``views=2`` gives ``x``
``(2B, C, H, W)``, two independent augmentations of the same ``B`` images, one after the
other (two-view self-distillation). ``source.test(batch_size)`` yields ``(x, None)`` in
dataset order without augmentation.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .augment import BatchAugment, parse_ops
from .splits import FileSplit, TensorSplit

Batch = Tuple[Tensor, Optional[Tensor]]


def to_unit(x: Tensor) -> Tensor:
    """Pixel values as float32 in ``[0, 1]`` (``uint8`` is divided by 255)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _chunks(order: Sequence[int], batch_size: int, start: int) -> list:
    return [list(order[i : i + batch_size]) for i in range(start * batch_size, len(order), batch_size)]


class TensorSource:
    """Batches from a :class:`TensorSplit` held on the device; augmentation is batched there too."""

    def __init__(self, split: TensorSplit, device: torch.device, augment: BatchAugment):
        self.train_x, self.test_x = split.train_x.to(device), split.test_x.to(device)
        self.device, self.augment = device, augment

    def train(self, order: Sequence[int], batch_size: int, start: int, gen: torch.Generator,
              epoch: int = 0, views: int = 1) -> Iterator[Batch]:
        order_t = torch.as_tensor(order, dtype=torch.long, device=self.device)
        for i in range(start * batch_size, len(order), batch_size):
            idx = order_t[i : i + batch_size]
            x = to_unit(self.train_x.index_select(0, idx))
            if views == 1:
                yield self.augment(x, gen), idx
            else:  # view a of the batch, then view b, drawn in turn from gen
                yield torch.cat([self.augment(x, gen) for _ in range(views)]), idx

    def test(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, self.test_x.shape[0], batch_size):
            yield to_unit(self.test_x[i : i + batch_size]), None

    def held_out(self, index: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Training images ``index`` in that order, without augmentation (temperature scaling's data)."""
        index_t = torch.as_tensor(index, dtype=torch.long, device=self.device)
        for i in range(0, len(index_t), batch_size):
            yield to_unit(self.train_x.index_select(0, index_t[i : i + batch_size])), None

    def extra_batch(self, index: Sequence[int], seed: int, key: int = 0) -> Tensor:
        """Training images ``index`` as one ``(M, C, H, W)`` batch, augmented as training batches are.

        The augmentation draws from a generator seeded with ``seed``; ``key`` is for image files
        (:meth:`FileSource.extra_batch`). A clean held-out batch of the meta-learning methods comes
        from here.
        """
        index_t = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return _augmented(self.augment, to_unit(self.train_x.index_select(0, index_t)), seed)


class _EpochBatches:
    """A batch sampler the source refills every epoch, so one DataLoader (and its workers) lasts the run."""

    def __init__(self) -> None:
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_list(items: list) -> list:
    return items


class FileSource:
    """Batches from a :class:`FileSplit`, read by ``num_workers`` persistent DataLoader workers.

    ``decode="pillow"``: the workers decode, crop (random-resized here, not padded) and flip
    (:mod:`ols.data.images`). ``decode="gpu"``: the workers only read the files' bytes, and
    the batch is decoded, cropped and flipped on the device (:mod:`ols.data.jpeg_device`),
    with the same crops and flips. CutOut, if asked for, runs batched on the device.
    """

    def __init__(self, split: FileSplit, device: torch.device, augment: BatchAugment,
                 num_workers: int = 4, seed: int = 0, decode: str = "pillow"):
        from .images import ImageFiles

        self.train_set = ImageFiles(split.train_files, split.image_size, split.resize,
                                    "crop" in augment.ops, "flip" in augment.ops, seed)
        self.test_set = ImageFiles(split.test_files, split.image_size, split.resize)
        self.held_set = ImageFiles(split.train_files, split.image_size, split.resize)  # centre crops
        self.device, self.num_workers = device, num_workers
        self.augment = BatchAugment([op for op in augment.ops if op == "cutout"],
                                    cutout_size=augment.cutout_size, fill=augment.fill)
        self.decoders = None
        if decode == "gpu":
            from .jpeg_device import DeviceDecoder

            self.decoders = {"train": DeviceDecoder(self.train_set, device),
                             "extra": DeviceDecoder(self.train_set, device),
                             "test": DeviceDecoder(self.test_set, device),
                             "held": DeviceDecoder(self.held_set, device)}
        self._loaders: dict = {}

    def _loader(self, name: str, keys: list):
        """The split's batches of ``keys`` from its persistent loader, as ``(images, idx)`` on the host."""
        from torch.utils.data import DataLoader

        if name not in self._loaders:
            dataset = {"train": self.train_set, "extra": self.train_set, "test": self.test_set,
                       "held": self.held_set}[name]
            sampler = _EpochBatches()
            if self.decoders is not None:
                from .jpeg_device import EncodedFiles

                dataset = EncodedFiles(dataset)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda" and self.decoders is None,
                                persistent_workers=self.num_workers > 0,
                                collate_fn=_as_list if self.decoders is not None else None)
            self._loaders[name] = (loader, sampler)
        loader, sampler = self._loaders[name]
        sampler.batches = keys
        try:
            for batch in loader:
                yield self.decoders[name](batch) if self.decoders is not None else batch
        except ValueError as err:  # a worker's error comes back wrapped in its traceback: keep its last line
            lines = [line for line in str(err).splitlines() if line.strip()]
            last = lines[-1] if lines else str(err)
            raise ValueError(last.split("ValueError: ", 1)[-1]) from None

    def train(self, order: Sequence[int], batch_size: int, start: int, gen: torch.Generator,
              epoch: int = 0, views: int = 1) -> Iterator[Batch]:
        keys = [[(i, epoch, views) for i in chunk] for chunk in _chunks(order, batch_size, start)]
        for x, idx in self._loader("train", keys):
            x = to_unit(x.to(self.device, non_blocking=True))  # (B, 3, H, W), or (B, views, 3, H, W)
            if views > 1:
                x = torch.cat(x.unbind(1))  # view 0 of every image, then view 1, ...
            yield self.augment(x, gen), torch.as_tensor(idx).to(self.device)

    def extra_batch(self, index: Sequence[int], seed: int, key: int = 0) -> Tensor:
        """Training images ``index`` as one batch, cropped and flipped as epoch ``key`` would crop them.

        Read by a loader of its own (the epoch's training loader is busy); CutOut, if asked for,
        draws from a generator seeded with ``seed``.
        """
        (x, _), = list(self._loader("extra", [[(int(i), key, 1) for i in index]]))
        return _augmented(self.augment, to_unit(x.to(self.device, non_blocking=True)), seed)

    def test(self, batch_size: int) -> Iterator[Batch]:
        return self._resized("test", range(len(self.test_set)), batch_size)

    def held_out(self, index: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Training images ``index`` in that order, resized and centre-cropped as the test images."""
        return self._resized("held", index, batch_size)

    def _resized(self, name: str, index: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Images ``index`` of the ``name`` split, resized and centre-cropped, in that order."""
        keys = [[(int(i), 0, 1) for i in chunk] for chunk in _chunks(list(index), batch_size, 0)]
        for x, _ in self._loader(name, keys):
            yield to_unit(x.to(self.device, non_blocking=True)), None


Source = Union[TensorSource, FileSource]


def _augmented(augment: BatchAugment, x: Tensor, seed: int) -> Tensor:
    """``augment(x)`` with a generator on ``x``'s device seeded with ``seed`` (none if nothing is random)."""
    if not augment.ops:
        return x
    return augment(x, torch.Generator(device=x.device).manual_seed(seed))


def augmentation_ops(dataset: str, augment: str) -> tuple:
    """The operations ``--augment`` names.

    ``auto`` is none for digits (a mirrored digit is another digit, or none) and for the
    feature set ``manyclass`` (a 1 x 1 "image"), crop + flip otherwise.
    """
    plain = dataset in ("digits", "manyclass")
    return parse_ops(("none" if plain else "crop,flip") if augment == "auto" else augment)


def make_source(dataset: str, split, device: torch.device, augment: str = "auto", crop_padding: int = 4,
                cutout_size: int = 8, num_workers: int = 4, seed: int = 0, decode: str = "pillow") -> Source:
    """The batch source for ``split`` with the augmentation ``augment`` names.

    ``decode`` (``pillow`` or ``gpu``) applies to image-file datasets only.
    """
    ops = augmentation_ops(dataset, augment)
    side = min(split.input_shape[1:])
    if "cutout" in ops and cutout_size > side:
        raise ValueError(f"--cutout-size {cutout_size} is larger than the {side}-pixel images of {dataset}; "
                         f"use at most {side}")
    aug = BatchAugment(ops, crop_padding, cutout_size, tuple(split.mean))
    if isinstance(split, TensorSplit):
        if decode != "pillow":
            raise ValueError(f"--decode {decode} applies to image-file datasets, and {dataset} is held in "
                             "memory; drop --decode")
        return TensorSource(split, device, aug)
    if decode not in ("pillow", "gpu"):
        raise ValueError(f"unknown --decode {decode!r}; use pillow or gpu")
    if decode == "gpu" and device.type != "cuda":
        raise ValueError(f"--decode gpu decodes JPEGs with nvJPEG on a CUDA device, and this run is on "
                         f"{device}; drop --decode (Pillow workers decode on the CPU)")
    return FileSource(split, device, aug, num_workers, seed, decode)
