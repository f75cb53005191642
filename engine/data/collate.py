"""Batching: right-padded batches, or padding-free packing of several samples per micro-batch.

How a packed micro-batch is laid out depends on the attention kernel (engine.attention):

- flash_attention_2 and flex_attention: the samples end to end in ONE row, no padding
  (FlatteningCollator, through transformers' DataCollatorWithFlattening). Flash attention gets the
  sample boundaries (cu_seq_lens_q/k, max_length_q/k) from the collator: transformers infers them
  from position ids only for a single row, and then syncs the host with the device in every layer.
  flex_attention builds its document mask (a sparse BlockMask) from the restarting position ids.
- sdpa and eager: rows of at most max_length tokens, each holding several samples
  (PackingCollator), with `position_ids` that restart at 0 for every sample and NO attention_mask.
  transformers (masking_utils.find_packed_sequence_indices, called from create_causal_mask when
  attention_mask is None) reads the boundaries from the restarts and builds a block-diagonal causal
  mask; a 2-D attention_mask would switch that detection off. Rows shorter than the longest are
  filled with padding whose position ids repeat one value that no sample starts or continues with,
  so that every padding token is a sequence of its own and the padding is told from real tokens
  (engine.callback counts only those).

Each sample's first label is set to -100 inside a pack: the causal-LM loss shifts labels by one,
so the last token of one sample would otherwise be trained to predict the first token of the next.
Unpacked, that label is never used either, so packed and unpacked losses are the same.
"""

from __future__ import annotations

from engine.attention import FLASH_KERNELS, FLATTENED_KERNELS
from engine.data.render import IGNORE_INDEX


def plan_packs(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices of samples grouped into rows of at most max_length tokens (first-fit decreasing).
    Lengths above max_length count as max_length (the collator truncates them)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = min(lengths[index], max_length)
        for row, free in enumerate(room):
            if size <= free:
                rows[row].append(index)
                room[row] -= size
                break
        else:
            rows.append([index])
            room.append(max_length - size)
    return rows


def plan_packs_bfd(lengths, max_length: int) -> list[list[int]]:
    """Indices of samples grouped into rows of at most max_length tokens, best-fit decreasing (as TRL's
    `bfd`): each sample, longest first, goes to the row it fills most tightly. Rows are looked up by
    their free room (at most max_length distinct values), so a million samples pack in seconds."""
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    rooms: list[int] = []  # distinct free room of the open rows, sorted
    by_room: dict[int, list[int]] = {}  # free room → rows with that room
    for index in order:
        size = min(lengths[index], max_length)
        at = bisect.bisect_left(rooms, size)
        if at < len(rooms):
            room = rooms[at]
            row = by_room[room].pop()
            if not by_room[room]:
                rooms.pop(at)
            rows[row].append(index)
        else:
            room, row = max_length, len(rows)
            rows.append([index])
        left = room - size
        if left > 0:
            if not by_room.get(left):
                bisect.insort(rooms, left)
                by_room[left] = []
            by_room[left].append(row)
    return rows


def pack_rows(samples: list[tuple[list[int], list[int]]]) -> tuple[list[int], list[int], list[int]]:
    """One packed row from (input_ids, labels) samples: the tokens end to end, each sample's first
    label -100 (see the module doc), position ids restarting at 0 for every sample."""
    ids, labels, positions = [], [], []
    for sample_ids, sample_labels in samples:
        ids.extend(sample_ids)
        labels.append(IGNORE_INDEX)
        labels.extend(sample_labels[1:])
        positions.extend(range(len(sample_ids)))
    return ids, labels, positions


def batch_efficiency(lengths: list[int], *, batch_size: int, max_length: int, packing: bool) -> float:
    """Useful tokens / token slots over consecutive batches of `batch_size` samples, as the collator
    lays them out (padded to the longest sample, or packed rows padded to the longest row)."""
    useful = slots = 0
    for start in range(0, len(lengths), batch_size):
        batch = [min(n, max_length) for n in lengths[start : start + batch_size]]
        if not batch:
            continue
        useful += sum(batch)
        if packing:
            rows = plan_packs(batch, max_length)
            slots += len(rows) * max(sum(batch[i] for i in row) for row in rows)
        else:
            slots += len(batch) * max(batch)
    return useful / slots if slots else 1.0


def _pad_id(tokenizer) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return candidate
    return 0


class PaddingCollator:
    """Right-padded batch: input_ids, labels (-100 on padding), attention_mask."""

    def __init__(self, pad_id: int, max_length: int):
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = [(f["input_ids"][: self.max_length], f["labels"][: self.max_length]) for f in features]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, labs) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[r, : len(labs)] = torch.tensor(labs, dtype=torch.long)
            attention_mask[r, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class PackingCollator:
    """Packed batch: input_ids, labels, position_ids (restarting per sample); no attention_mask."""

    def __init__(self, pad_id: int, max_length: int):
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if "position_ids" in features[0]:  # rows packed ahead (data.packing_strategy: dataset)
            rows = [(f["input_ids"], f["labels"], f["position_ids"]) for f in features]
        else:
            samples = [(f["input_ids"][: self.max_length], f["labels"][: self.max_length]) for f in features]
            packs = plan_packs([len(ids) for ids, _ in samples], self.max_length)
            rows = [pack_rows([samples[index] for index in pack]) for pack in packs]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, labs, positions) in enumerate(rows):
            n = len(ids)
            input_ids[r, :n] = torch.tensor(ids, dtype=torch.long)
            labels[r, :n] = torch.tensor(labs, dtype=torch.long)
            position_ids[r, :n] = torch.tensor(positions, dtype=torch.long)
            # Padding: one position that neither starts a sample (0) nor continues the last one.
            position_ids[r, n:] = 2 if positions[-1] == 0 else 1
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def split_packed_row(input_ids, labels, position_ids):
    """(input_ids, labels) of each sample in a row packed ahead, cut where the positions restart."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return [(input_ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:])]


class FlatteningCollator:
    """Packed batch for padding-free kernels: every sample of the micro-batch end to end in one row
    (input_ids, labels, position_ids of shape 1 x tokens), with the flash-attention boundaries
    (cu_seq_lens_q/k, max_length_q/k) when `flash_kwargs`. Rows packed ahead are split back into
    their samples first."""

    def __init__(self, max_length: int, *, flash_kwargs: bool):
        from transformers import DataCollatorWithFlattening

        self.max_length = max_length
        # separator_id: each sample's first label, which the shifted loss would otherwise predict
        # from the previous sample's last token (see the module doc).
        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs, separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict:
        if "position_ids" in features[0]:  # rows packed ahead (data.packing_strategy: dataset)
            samples = [s for f in features for s in split_packed_row(f["input_ids"], f["labels"], f["position_ids"])]
        else:
            samples = [(f["input_ids"][: self.max_length], f["labels"][: self.max_length]) for f in features]
        return self.flatten([{"input_ids": list(ids), "labels": list(labels)} for ids, labels in samples])


def make_collator(tokenizer, *, packing: bool, max_length: int, attn_implementation: str | None = None):
    """callable(list of {"input_ids", "labels"}) -> dict of tensors.

    packing=False: input_ids, labels, attention_mask (right padding to the longest sample).
    packing=True with a padding-free kernel (engine.attention.FLATTENED_KERNELS): one flattened row
    (FlatteningCollator). packing=True otherwise: the batch's samples packed into as few rows of
    <= max_length tokens as fit, with input_ids, labels and position_ids — and deliberately no
    attention_mask (see module doc).
    """
    if packing and attn_implementation in FLATTENED_KERNELS:
        return FlatteningCollator(max_length, flash_kwargs=attn_implementation in FLASH_KERNELS)
    pad_id = _pad_id(tokenizer)
    return PackingCollator(pad_id, max_length) if packing else PaddingCollator(pad_id, max_length)
