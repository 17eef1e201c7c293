"""Lesson 6: which part of the picture each word of the prompt attends to (DAAM).

Every cross-attention layer l of the UNet lets each latent pixel (query) look at the
tokens of the prompt (keys). Its attention probabilities, per head h::

    A_{l,h} = softmax(Q_{l,h} K_{l,h}ᵀ / √d)      Q = W_q z (pixels), K = W_k c (tokens), d = head width

are one map per token over that layer's grid. DAAM (Tang et al. 2023, "What the DAAM:
Interpreting Stable Diffusion Using Cross Attention", ACL 2023) upsamples every head's
map to one resolution and adds them over heads, layers and steps into one heat map per
word. Here, for step t and prompt token k::

    D_{t,k} = 1/L Σ_l up( 1/H_l Σ_h A_{l,h}[:, k] )      up = bilinear upsampling to the latent's h×w

(the mean over the H_l heads and L layers instead of DAAM's sum: a constant factor, so
a step's map stays a share of the attention), and the aggregate is Σ_t D_{t,k}.

How it is recorded: :func:`ensure_installed` gives every attention layer of a UNet, once,
a :class:`RecordingProcessor` through diffusers' attention-processor interface. It runs
the layer's previous (standard) processor unchanged, except in a thread or context that
has an active :class:`AttentionRecorder` (:func:`recording`, a ``contextvars`` variable):
there the cross-attention layers compute their output exactly as before (the pictures
do not change by a bit) and, besides, A explicitly, which they hand to the recorder.
Runs in other server threads sharing the UNet are not affected. Under classifier-free
guidance the UNet's batch is [unconditional; conditional]; only the conditional half
(the prompt's own attention) is computed and kept.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from diffusion.errors import InputError, check_range

MAX_TOKENS = 75  # CLIP's 77 positions less the start and end tokens
MAX_BYTES = 64 * 2**20  # per-step maps of one run beyond this: only the aggregate is kept
MAX_OVERLAY_SIDE = 2048
STANDARD_PROCESSORS = (AttnProcessor, AttnProcessor2_0)

_ACTIVE: ContextVar[AttentionRecorder | None] = ContextVar("text2image_attention_recorder", default=None)
_INSTALL_LOCK = threading.Lock()


@dataclass(eq=False)
class AttentionMaps:
    """The recorded cross-attention of one run: one map per prompt token, per picture.

    Attributes:
        tokens: The prompt's tokens as readable text (start, end and padding tokens left out).
        token_ids: Their tokenizer ids.
        steps: ``(S, B, T, h, w)`` float16, the map D of each step, or None where keeping
            them would have passed the byte budget (``steps_dropped``).
        total: ``(B, T, h, w)`` float32, D summed over the steps run (DAAM's aggregate).
        steps_run: How many steps were recorded (a stopped run: the steps before the stop).
        layers: Names of the cross-attention layers averaged.
        steps_dropped: The per-step maps were not kept (over :data:`MAX_BYTES`).
    """

    tokens: list[str]
    token_ids: list[int]
    steps: torch.Tensor | None
    total: torch.Tensor
    steps_run: int
    layers: list[str]
    steps_dropped: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes held by the maps."""
        kept = 0 if self.steps is None else self.steps.numel() * self.steps.element_size()
        return kept + self.total.numel() * self.total.element_size()

    def at(self, step: Any) -> torch.Tensor:
        """The maps ``(B, T, h, w)`` (float32) of 1-based step ``step``; step 0 is the sum over all steps.

        Raises:
            InputError: ``no_steps`` for a run stopped before its first step; ``step`` not a
                whole number in ``[0, steps_run]``; ``attention_steps_not_kept`` for a step
                k ≥ 1 of a run whose per-step maps were over the byte budget.
        """
        if not self.steps_run:
            raise InputError("no_steps", "This run was stopped before its first step.")
        k = int(check_range("step", step, 0, self.steps_run, integer=True))
        if k == 0:
            return self.total.to(torch.float32, copy=True)
        if self.steps is None:
            raise InputError("attention_steps_not_kept", "The attention of single steps was not kept for this run "
                             "(it would take more than {mb} MB); choose step 0, all steps together.",
                             mb=MAX_BYTES // 2**20)
        return self.steps[k - 1].float()


class RecordingProcessor:
    """An attention layer's processor: its previous one, or with a recorder active, explicit attention.

    Args:
        name: The layer's key in ``unet.attn_processors``.
        inner: The layer's previous processor (diffusers' ``AttnProcessor2_0`` or ``AttnProcessor``),
            which computes every call while nothing records, and self-attention always.
    """

    def __init__(self, name: str, inner: Any) -> None:
        self.name, self.inner = name, inner
        self.sdpa = isinstance(inner, AttnProcessor2_0)  # SDPA's scale is always 1/√d

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        """Same signature and result as diffusers' processors (``Attention.forward`` filters its kwargs by it)."""
        recorder = _ACTIVE.get()
        if recorder is None or encoder_hidden_states is None or not attn.is_cross_attention \
                or (recorder.layers is not None and self.name not in recorder.layers):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._recorded(attn, hidden_states, encoder_hidden_states, attention_mask, temb, recorder)

    def _recorded(self, attn: Any, hidden_states: torch.Tensor, context: torch.Tensor,
                  attention_mask: torch.Tensor | None, temb: torch.Tensor | None,
                  recorder: AttentionRecorder) -> torch.Tensor:
        # AttnProcessor2_0's computation line by line (the same output, bit for bit), plus
        # softmax(Q Kᵀ/√d) of the conditional half made explicit for the recorder.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, context_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        kept = min(recorder.batch, batch)  # [unconditional; conditional] under guidance: the last B
        if self.sdpa:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=0.0, is_causal=False)
            if kept < batch:
                query, key = query[-kept:], key[-kept:]
                attention_mask = None if attention_mask is None else attention_mask[-kept:]
            probs = _softmax_qk(query, key, head_dim ** -0.5, attention_mask)
        else:  # AttnProcessor: its own scale (1 where scale_qk is off), the probabilities used for the output
            every = _softmax_qk(query, key, attn.scale, attention_mask)
            hidden_states, probs = torch.matmul(every.to(value.dtype), value), every[-kept:]
        recorder.add(self.name, probs)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, then dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _softmax_qk(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """A = softmax(Q Kᵀ · scale + mask) of ``(B, heads, N, d)`` queries and ``(B, heads, K, d)`` keys, in float32."""
    if query.dtype != torch.float32:  # half precision: scores and softmax in float32, as SDPA accumulates them
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def ensure_installed(unet: Any) -> bool:
    """Give every attention layer of ``unet`` a :class:`RecordingProcessor`, once (idempotent, thread-safe).

    Installed only over diffusers' standard processors, so a UNet with others (xformers,
    IP-Adapter, fused or custom processors) keeps them and cannot record.

    Returns:
        Whether the UNet can record attention now.
    """
    with _INSTALL_LOCK:
        processors = unet.attn_processors
        if not processors:
            return False
        if all(isinstance(p, RecordingProcessor) for p in processors.values()):
            return True
        if not all(isinstance(p, RecordingProcessor) or type(p) in STANDARD_PROCESSORS for p in processors.values()):
            return False
        unet.set_attn_processor({name: p if isinstance(p, RecordingProcessor) else RecordingProcessor(name, p)
                                 for name, p in processors.items()})
        return True


def uninstall(unet: Any) -> None:
    """Give ``unet``'s layers back the processors they had before :func:`ensure_installed`."""
    with _INSTALL_LOCK:
        processors = unet.attn_processors
        if any(isinstance(p, RecordingProcessor) for p in processors.values()):
            unet.set_attn_processor({name: p.inner if isinstance(p, RecordingProcessor) else p
                                     for name, p in processors.items()})


def prompt_tokens(tokenizer: Any, prompt: str) -> tuple[list[int], list[str], list[int]]:
    """The prompt's own tokens as the pipeline encodes it (truncated to the tokenizer's length).

    Returns:
        ``(ids, words, positions)``: token ids, their text (decoded, ``</w>`` stripped) and
        their positions in the text encoder's context; special tokens are left out, at most
        :data:`MAX_TOKENS`.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    special = set(tokenizer.all_special_ids)
    positions = [i for i, t in enumerate(ids) if t not in special][:MAX_TOKENS]
    kept = [int(ids[i]) for i in positions]
    words = [tokenizer.decode([t]).replace("</w>", "").strip() for t in kept]
    return kept, words, positions


class AttentionRecorder:
    """Collects one run's cross-attention maps, reduced on the fly (see the module docstring).

    Each layer call is only added, in place, into a sum per (heads, grid); at the end of
    a step (:meth:`end_step`) the sums are averaged over heads, the prompt's tokens picked,
    each grid upsampled once, and the step's map D is the mean over the layer calls.

    Args:
        tokenizer: The pipeline's tokenizer.
        prompt: The prompt (the conditional text of the run).
        latent_size: The latent's ``(h, w)``: every layer's grid is derived from it.
        batch: Pictures B per run (the conditional half of a guided batch).
        expected_steps: Steps the run will take at most (for the per-step buffer).
        max_bytes: Budget of the per-step maps; beyond it only the aggregate is kept.
        layers: Names of the cross-attention layers to average (None: all of them).
    """

    def __init__(self, tokenizer: Any, prompt: str, latent_size: tuple[int, int], batch: int, expected_steps: int,
                 max_bytes: int = MAX_BYTES, layers: Collection[str] | None = None) -> None:
        self.token_ids, self.tokens, positions = prompt_tokens(tokenizer, prompt)
        contiguous = positions == list(range(positions[0], positions[0] + len(positions))) if positions else True
        self._columns: Any = slice(positions[0], positions[0] + len(positions)) if positions and contiguous \
            else torch.tensor(positions, dtype=torch.long)
        self.size, self.batch = (int(latent_size[0]), int(latent_size[1])), int(batch)
        self.layers = frozenset(layers) if layers is not None else None
        self.seen: dict[str, None] = {}
        self._sums: dict[tuple[int, int], torch.Tensor] = {}  # by (heads, queries)
        self._grids: dict[int, tuple[int, int] | None] = {}
        self._calls = self.steps_run = 0
        self._total: torch.Tensor | None = None
        self.skipped = 0  # layer calls whose grid or batch did not fit the run (not averaged)
        shape = (max(int(expected_steps), 0), self.batch, len(self.tokens), *self.size)  # float16: 2 bytes each
        self.steps_dropped = 2 * int(np.prod(shape)) > max_bytes
        self._steps = None if self.steps_dropped else torch.empty(shape, dtype=torch.float16)

    def _grid(self, queries: int) -> tuple[int, int] | None:
        """A layer's (h, w) from its query count: the latent's, halved (rounding up) per UNet level."""
        if queries not in self._grids:
            h, w = self.size
            while h * w > queries and (h > 1 or w > 1):
                h, w = -(-h // 2), -(-w // 2)
            self._grids[queries] = (h, w) if h * w == queries else None
        return self._grids[queries]

    def add(self, layer: str, probs: torch.Tensor) -> None:
        """Take one layer call's probabilities ``(B, heads, queries, context)`` of the B pictures (rows sum to 1)."""
        if probs.shape[0] != self.batch or self._grid(probs.shape[2]) is None:
            self.skipped += 1
            return
        if not self.tokens:  # an empty prompt: nothing to map
            return
        # One in-place sum per layer call: heads, tokens and grids are sorted out once per step.
        key = (probs.shape[1], probs.shape[2])
        summed = self._sums.get(key)
        if summed is None:
            self._sums[key] = probs.clone()
        else:
            summed.add_(probs)
        self._calls += 1
        self.seen.setdefault(layer)

    def end_step(self) -> None:
        """Close a step: D = mean over its layer calls of the upsampled head-averaged maps."""
        h, w = self.size
        grids: dict[int, torch.Tensor] = {}
        for (_, queries), summed in self._sums.items():  # layers of one grid with the same number of heads
            maps = summed[..., self._columns].mean(dim=1)  # (B, N, T): Σ_l mean_h A_{l,h} of the prompt's tokens
            grids[queries] = maps if queries not in grids else grids[queries] + maps
        step: torch.Tensor | None = None
        for queries, maps in grids.items():
            grid = self._grids[queries]
            maps = maps.transpose(1, 2).reshape(self.batch, len(self.tokens), *grid)
            if grid != (h, w):  # once per grid and step, not per layer: upsampling is linear
                maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
            step = maps if step is None else step + maps
        if step is None:  # a step without a recorded layer call (or a prompt without tokens)
            step = torch.zeros((self.batch, len(self.tokens), h, w))
        else:
            step /= self._calls
        self._sums.clear()
        self._calls, self._total = 0, step if self._total is None else self._total + step.to(self._total.device)
        if self._steps is not None:
            if self.steps_run < self._steps.shape[0]:
                self._steps[self.steps_run].copy_(step)
            else:  # more steps than announced: keep the aggregate only
                self._steps, self.steps_dropped = None, True
        self.steps_run += 1

    def result(self) -> AttentionMaps:
        """The maps recorded so far (calls after the last :meth:`end_step` are closed as one more step)."""
        if self._calls:
            self.end_step()
        h, w = self.size
        total = torch.zeros((self.batch, len(self.tokens), h, w)) if self._total is None else self._total.cpu()
        steps = None if self._steps is None else self._steps[:self.steps_run].clone()
        return AttentionMaps(tokens=list(self.tokens), token_ids=list(self.token_ids), steps=steps, total=total,
                             steps_run=self.steps_run, layers=list(self.seen), steps_dropped=self.steps_dropped)


@contextlib.contextmanager
def recording(recorder: AttentionRecorder | None) -> Iterator[AttentionRecorder | None]:
    """Make ``recorder`` the active one in the current thread/context (None: record nothing here)."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def overlays(picture: np.ndarray, maps: Any, tokens: Sequence[str], alpha: float = 0.6,
             colormap: str = "inferno") -> list[tuple[np.ndarray, str]]:
    """One picture per word: ``picture`` blended with its attention map in a colormap, captioned.

    Each map is bilinearly upsampled to the picture and normalised **per word** to [0, 1]
    (its own minimum to its own maximum), so the overlays show where each word looks,
    not how strongly compared with the other words. A constant map shows as 0. The blend
    is ``(1 - alpha) · picture + alpha · colormap(map)``.

    Args:
        picture: ``(H, W, 3)`` uint8, at most :data:`MAX_OVERLAY_SIDE` a side.
        maps: ``(T, h, w)`` tensor or array, one map per word (e.g. ``AttentionMaps.at(k)[b]``),
            at most :data:`MAX_TOKENS` of them.
        tokens: The T words, used as captions.
        alpha: Weight of the colour map in the blend, in [0, 1].
        colormap: A matplotlib colormap name.

    Returns:
        ``[(overlay (H, W, 3) uint8, word), ...]``.

    Raises:
        InputError: Pictures, maps or words of the wrong type or shape.
    """
    import matplotlib  # the colour tables only: no figure is made

    if not isinstance(picture, np.ndarray) or picture.dtype != np.uint8 or picture.ndim != 3 \
            or picture.shape[2] != 3 or not 1 <= min(picture.shape[:2]) <= max(picture.shape[:2]) <= MAX_OVERLAY_SIDE:
        raise InputError("bad_picture", "The picture must be an RGB uint8 array (H, W, 3) of at most {side} pixels a "
                         "side.", side=MAX_OVERLAY_SIDE)
    try:
        grid = torch.as_tensor(maps if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=np.float32)).float()
    except (TypeError, ValueError, RuntimeError):
        grid = None
    if grid is None or grid.dim() != 3 or not 1 <= min(grid.shape[1:]) <= max(grid.shape[1:]) <= MAX_OVERLAY_SIDE \
            or grid.shape[0] > MAX_TOKENS or not torch.isfinite(grid).all():
        raise InputError("bad_maps", "The attention maps must be finite numbers shaped (words, h, w), at most "
                         "{n} words.", n=MAX_TOKENS)
    if not isinstance(tokens, Sequence) or isinstance(tokens, str) or len(tokens) != grid.shape[0] \
            or not all(isinstance(t, str) for t in tokens):
        raise InputError("bad_tokens", "There must be one word (text) per attention map ({n} maps).",
                         n=int(grid.shape[0]))
    alpha = check_range("alpha", alpha, 0.0, 1.0)
    if colormap not in matplotlib.colormaps:
        raise InputError("bad_choice", "{name} must be a matplotlib colormap name.", name="colormap")
    height, width = picture.shape[:2]
    colours, base = matplotlib.colormaps[colormap], (1.0 - alpha) * picture.astype(np.float32)
    shown = []
    for word, one in zip(tokens, grid, strict=True):  # one word at a time: memory stays one picture's worth
        up = F.interpolate(one[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        low, high = up.min(), up.max()
        scaled = ((up - low) / (high - low).clamp_min(1e-12)).numpy()
        tinted = colours(scaled, bytes=True)[..., :3].astype(np.float32)
        shown.append((np.rint(base + alpha * tinted).clip(0, 255).astype(np.uint8), str(word)))
    return shown
