"""Each peer's input, built from the FlowTable tensors every model of the suite reads (`bytes` [N, K, B]: the
first B bytes of the first K packets from the network header on, shortcut fields masked; `sizes` [N, K]: signed
IP lengths, + client to server; `iat` [N, K] seconds). Deviations from the papers, forced by one shared table:

* ET-BERT tokenises hex bigrams of the packets' bytes; here the bytes are the masked rows (header included, as the
  released ET-BERT code does), the bigrams overlap by one byte (its tokeniser) and a token is the 2-byte value
  (65,536 + 4 special tokens; the released vocabulary keeps 60,005 of them).
* YaTC and NetMamba read 5 packets × 320 bytes (80 header + 240 payload); here each packet's row is its first 320
  bytes from the network header (header and payload as they come), zero-padded — the same 1,600 bytes per flow,
  not split at the header boundary.
* The 1D-CNN reads the first 784 bytes of the flow: the rows of its packets concatenated, each cut at its length.
"""
from __future__ import annotations

import numpy as np

SPECIAL = {"pad": 0, "cls": 1, "sep": 2, "mask": 3}
BIGRAM_VOCAB = 65536 + len(SPECIAL)
LENGTH_VOCAB = 2 * 1601  # signed IP lengths clipped to ±1600, shifted to ≥ 0


def valid_bytes(sizes: np.ndarray, width: int) -> np.ndarray:
    """[N, K] number of real bytes in each packet row (its IP length, at most `width`; 0 for padding packets)."""
    return np.minimum(np.abs(np.asarray(sizes, np.int64)), width)


def packet_rows(tensors: dict, idx: np.ndarray, packets: int, width: int) -> np.ndarray:
    """uint8 [N, packets, width]: the first `width` bytes of the first `packets` packets, zero past the table's
    width or the packet's end."""
    rows = np.asarray(tensors["bytes"])[idx][:, :packets, :width]
    out = np.zeros((len(idx), packets, width), np.uint8)
    out[:, :rows.shape[1], :rows.shape[2]] = rows
    return out


def flow_bytes(tensors: dict, idx: np.ndarray, length: int, packets: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, length], bool [N, length]): the packets' real bytes concatenated (each row cut at its packet's
    length), zero-padded, and which positions are real."""
    rows = np.asarray(tensors["bytes"])[idx][:, :packets]
    n, k, b = rows.shape
    real = np.arange(b)[None, None, :] < valid_bytes(np.asarray(tensors["sizes"])[idx][:, :k], b)[:, :, None]
    out = np.zeros((n, length), np.uint8)
    mask = np.zeros((n, length), bool)
    for i in range(n):  # ragged: N is thousands, the rows are short
        data = rows[i][real[i]][:length]
        out[i, :len(data)], mask[i, :len(data)] = data, True
    return out, mask


def bigram_tokens(tensors: dict, idx: np.ndarray, length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """ET-BERT's datagram input: [CLS] + overlapping byte bigrams of the flow's bytes → (int32 [N, length] token
    ids, bool [N, length] real tokens)."""
    data, real = flow_bytes(tensors, idx, length)  # length - 1 bigrams need `length` bytes
    data = data.astype(np.int32)
    grams = data[:, :-1] * 256 + data[:, 1:] + len(SPECIAL)
    ok = real[:, :-1] & real[:, 1:]
    tokens = np.full((len(idx), length), SPECIAL["pad"], np.int32)
    tokens[:, 0] = SPECIAL["cls"]
    tokens[:, 1:] = np.where(ok, grams, SPECIAL["pad"])
    mask = np.concatenate([np.ones((len(idx), 1), bool), ok], 1)
    return tokens, mask


def byte_image(tensors: dict, idx: np.ndarray, packets: int = 5, row: int = 320, side: int = 40) -> np.ndarray:
    """YaTC's matrix: `packets` rows of `row` bytes as a float32 [N, side, side] image in [0, 1]."""
    if packets * row != side * side:
        raise ValueError(f"{packets} packets × {row} bytes is not a {side}×{side} image")
    return packet_rows(tensors, idx, packets, row).reshape(len(idx), side, side).astype(np.float32) / 255.0


def stride_tokens(tensors: dict, idx: np.ndarray, packets: int = 5, row: int = 320, stride: int = 4) -> np.ndarray:
    """NetMamba's input: the same 5 × 320 bytes cut into non-overlapping `stride`-byte tokens, float32
    [N, packets·row/stride, stride] in [0, 1]."""
    flat = packet_rows(tensors, idx, packets, row).reshape(len(idx), -1)
    return flat.reshape(len(idx), -1, stride).astype(np.float32) / 255.0


def first_bytes(tensors: dict, idx: np.ndarray, length: int = 784) -> np.ndarray:
    """The 1D-CNN's input: the flow's first `length` real bytes, float32 [N, length] in [0, 1]."""
    data, _ = flow_bytes(tensors, idx, length)
    return data.astype(np.float32) / 255.0


def length_sequence(tensors: dict, idx: np.ndarray, packets: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """FS-Net's input: signed packet lengths as ids in [0, LENGTH_VOCAB) and which packets are real."""
    sizes = np.asarray(tensors["sizes"])[idx][:, :packets].astype(np.int64)
    ids = np.clip(sizes, -1600, 1600) + 1600
    return ids.astype(np.int32), sizes != 0
