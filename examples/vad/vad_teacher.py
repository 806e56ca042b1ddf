"""silero-vad's voice-activity model as a frozen crossdistill teacher.

The model ships with the ``silero-vad`` package as ONNX (``silero_vad/data/silero_vad.onnx``); it
runs under onnxruntime, never through ``torch.jit.load``. It is a streaming model: each call reads
one 512-sample chunk (32 ms at 16 kHz) preceded by the last 64 samples of the previous chunk, and
carries an LSTM state from chunk to chunk. :class:`SileroVAD` does exactly what the package's
``OnnxWrapper.audio_forward`` does for one clip — zero state and zero context at the start, the
last chunk zero-padded — for a whole batch of clips at once (one ONNX call per chunk, the batch
as the model's batch axis), and returns one speech probability per chunk: ``(B, F, 1)`` with
``F = ceil(T / 512)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16_000
CHUNK = 512  # samples per frame at 16 kHz (32 ms): the model accepts no other size
CONTEXT = 64  # samples of the previous chunk the model reads before each chunk
STATE = 128  # LSTM width; the state is (2, B, 128)


def packaged_file(name: str) -> Path:
    """A file shipped in ``silero_vad/data`` (``silero_vad.onnx``, the safetensors weights).

    Found without importing ``silero_vad``: its ``__init__`` calls ``torch.set_num_threads(1)``,
    which would silently slow down every later training in the process."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the teacher needs the silero-vad package: pip install silero-vad (no extras)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad ships no {name} at {path}")
    return path


def silero_parameters() -> int:
    """Parameters of the 16 kHz network, counted from the package's safetensors weights (the
    ONNX file holds the 8 kHz network too, so its initializers would count both)."""
    from safetensors.numpy import load_file  # tensors only: nothing executable is read

    return int(sum(v.size for v in load_file(packaged_file("silero_vad_16k.safetensors")).values()))


class SileroVAD(nn.Module):
    """``(B, T)`` float waveforms at 16 kHz in [-1, 1] → ``(B, F, 1)`` speech probabilities.

    Each row is a clip of its own: the recurrent state and the context start from zeros for
    every call, as the package resets them per audio. ``threads`` is onnxruntime's intra-op
    thread count (the package uses 1).
    """

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort  # an optional dependency, needed only by this teacher

        path = packaged_file("silero_vad.onnx")
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # The weights live in the ONNX file, not in torch parameters: a buffer holding the file's
        # SHA-256 makes the teacher's state dict (and so a knowledge store's fingerprint of the
        # teacher) change when the model file does.
        digest = hashlib.sha256(path.read_bytes()).digest()
        self.register_buffer("onnx_sha256", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(
                f"SileroVAD expects (batch, samples) waveforms, got {tuple(wave.shape)}"
            )
        x = wave.detach().to("cpu", torch.float32).numpy()
        batch, length = x.shape
        frames = -(-length // CHUNK)
        x = np.pad(x, ((0, 0), (CONTEXT, frames * CHUNK - length)))  # zero context, padded tail
        state = np.zeros((2, batch, STATE), dtype=np.float32)
        rate = np.array(SAMPLE_RATE, dtype=np.int64)
        probs = np.empty((batch, frames), dtype=np.float32)
        for f in range(frames):
            chunk = np.ascontiguousarray(x[:, f * CHUNK : f * CHUNK + CONTEXT + CHUNK])
            out, state = self.session.run(None, {"input": chunk, "state": state, "sr": rate})
            probs[:, f] = out[:, 0]
        return torch.from_numpy(probs).unsqueeze(-1).to(wave.device)


def silero_vad(threads: int = 1) -> SileroVAD:
    """The teacher, for ``crossdistill.build_model("teacher:silero_vad")`` and recipes."""
    return SileroVAD(threads)
