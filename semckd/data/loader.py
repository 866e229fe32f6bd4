"""On-device batching for datasets small enough to live in accelerator memory.

The whole training set is one uint8 tensor on the training device. Each batch is gathered from it
with one index op, augmented with batched tensor ops (random crop with zero padding + horizontal flip
as a single ``gather``) and normalised in float32, so the hot loop does no per-image Python work and no
host→device copies. Every random draw of an epoch (the permutation and each sample's crop/flip) comes
from a CPU generator seeded by ``(seed, epoch)``, so the same epoch yields bit-identical batches on any
device, after a resume, and whatever the number of DDP ranks (augmentation is drawn per sample, not per
position).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = ["DeviceLoader", "Normalizer", "crop_flip", "derive_seed", "epoch_order", "resized_crop_flip",
           "shard_size"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def derive_seed(seed: int, epoch: int, stream: str = "") -> int:
    """A 63-bit seed from (seed, epoch, stream); stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(f"semckd:{seed}:{epoch}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, epoch, stream))
    return g


def shard_size(n: int, world_size: int, rank: int = 0, *, even: bool = True, drop_tail: bool = False) -> int:
    """Samples rank ``rank`` sees per epoch under :func:`epoch_order`'s sharding rules."""
    if world_size == 1:
        return n
    if not even:
        return len(range(rank, n, world_size))
    return n // world_size if drop_tail else math.ceil(n / world_size)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                even: bool = True, drop_tail: bool = False) -> torch.Tensor:
    """This rank's sample indices for one epoch (CPU int64), like ``DistributedSampler``.

    All ranks draw the same permutation of ``range(n)`` and take every ``world_size``-th element from
    ``rank``. ``even=True`` (training) makes shards equal so every rank runs the same number of steps:
    the permutation is padded by repeating its head, or cut (``drop_tail``). ``even=False`` (evaluation)
    keeps shards disjoint and exact, so ranks may differ by one sample.
    """
    if shuffle:
        order = torch.randperm(n, generator=_generator(seed, epoch, "order"))
    else:
        order = torch.arange(n)
    if world_size == 1:
        return order
    if even:
        if drop_tail:
            order = order[: (n // world_size) * world_size]
        else:
            total = math.ceil(n / world_size) * world_size
            if total > n:
                reps = math.ceil(total / n)
                order = order.repeat(reps)[:total]
    return order[rank::world_size]


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor,
              pad: int) -> torch.Tensor:
    """Batched RandomCrop(size=H×W, padding=pad, fill=0) + horizontal flip in one ``gather``.

    ``x`` is (B, C, H, W); ``oy``/``ox`` are each sample's crop offset into the zero-padded image
    (0..2·pad) and ``flip`` a bool per sample. Works on any dtype and device.
    """
    b, c, h, w = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = oy.view(b, 1) + ar_h  # (B, H)
    cols = ox.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # (B, W)
    lin = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, hp * wp).gather(2, lin).view(b, c, h, w)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Batched random-resized crop back to the input size + horizontal flip, as one ``grid_sample``.

    ``boxes`` is (B, 4) float ``(left, top, width, height)`` in pixels of the (B, C, H, W) batch ``x``;
    bilinear resampling, float32 output in the input's value range (0..255 for uint8 images).
    """
    b, c, h, w = x.shape
    bx = boxes.to(x.device, torch.float32)
    sx, sy = bx[:, 2] / w, bx[:, 3] / h
    cx = (bx[:, 0] + bx[:, 2] / 2) / w * 2 - 1
    cy = (bx[:, 1] + bx[:, 3] / 2) / h * 2 - 1
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(flip.to(x.device), -sx, sx)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalizer:
    """uint8 NCHW → float32 ``(x/255 - mean)/std`` on the batch's device, as one fused multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 channels_last: bool = False) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        c = len(mean)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.shift, x.float(), self.scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


class DeviceLoader:
    """Yields ``(images float32 normalised NCHW, targets int64, index int64)`` from device memory.

    ``index`` is each sample's position in the full training set (CRD-style memory banks need it).
    ``batch_size`` is per process. Call :meth:`set_epoch` each epoch (like ``DistributedSampler``);
    without it, each new iteration advances to the next epoch so a forgetful loop still reshuffles.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], shuffle: bool = False,
                 drop_last: bool = False, augment: bool = False, pad: int = 0, flip: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 device: torch.device | str | None = None, even_shards: bool = True,
                 resized_crop: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}")
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"invalid DDP rank {rank} for world size {world_size}")
        if pad < 0:
            raise UserError(f"crop padding must be >= 0, got {pad}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.targets = targets.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment, self.pad, self.flip = augment, pad, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.even_shards = even_shards
        self.resized_crop = resized_crop  # random-resized crop instead of padded crop (large images)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self._epoch = 0

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def dataset_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_samples(self) -> int:
        """Samples this rank iterates per epoch (before dropping a last partial batch)."""
        return shard_size(self.dataset_size, self.world_size, self.rank, even=self.even_shards,
                          drop_tail=self.drop_last)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- epochs ------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (seeds its order and augmentation)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def _order(self, epoch: int) -> torch.Tensor:
        return epoch_order(self.dataset_size, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                           rank=self.rank, world_size=self.world_size, even=self.even_shards,
                           drop_tail=self.drop_last)

    def _aug_params(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample (oy, ox, flip) for the whole dataset: one small CPU draw + one copy per epoch."""
        g = _generator(self.seed, epoch, "augment")
        n = self.dataset_size
        if self.resized_crop:
            import random

            from .imagefolder import random_resized_crop_box
            rng = random.Random(derive_seed(self.seed, epoch, "resized_crop"))
            h, w = int(self.images.shape[-2]), int(self.images.shape[-1])
            boxes = torch.tensor([random_resized_crop_box(w, h, rng) for _ in range(n)], dtype=torch.float32)
            boxes[:, 2:] -= boxes[:, :2]  # (left, top, right, bottom) -> (left, top, width, height)
            flips = (torch.randint(0, 2, (n,), generator=g).bool() if self.flip
                     else torch.zeros(n, dtype=torch.bool))
            return boxes.to(self.device), flips.to(self.device), flips.to(self.device)
        offs = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g)
        if self.flip:
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        else:
            flips = torch.zeros(n, dtype=torch.bool)
        offs, flips = offs.to(self.device), flips.to(self.device)
        return offs[0], offs[1], flips

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._epoch
        self._epoch = epoch + 1
        order = self._order(epoch).to(self.device)
        n = len(order)
        nb = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        params = self._aug_params(epoch) if self.augment else None
        # On CPU, batch assembly is a handful of ~100k-element ops: splitting them over OpenMP threads
        # gains little and, on a busy machine, costs 10x in barrier waits (measured on 2 cores). Build
        # each batch single-threaded and restore the caller's setting before handing it over.
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        for b in range(nb):
            if threads > 1:
                torch.set_num_threads(1)
            try:
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                x = self.images.index_select(0, idx)
                if params is not None and self.resized_crop:
                    x = resized_crop_flip(x, params[0].index_select(0, idx), params[1].index_select(0, idx))
                elif params is not None:
                    oy, ox, fl = (p.index_select(0, idx) for p in params)
                    x = crop_flip(x, oy, ox, fl, self.pad)
                batch = (self.normalize(x), self.targets.index_select(0, idx), idx)
            finally:
                if threads > 1:
                    torch.set_num_threads(threads)
            yield batch

    def __repr__(self) -> str:
        return (f"DeviceLoader(n={self.dataset_size}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, pad={self.pad}, flip={self.flip}, "
                f"rank={self.rank}/{self.world_size}, device={self.device})")
