"""Lesson 6's own tiny Stable Diffusion: the builders of its four parts.

A latent diffusion model (Rombach et al. 2022) in the parts and folder layout of
Stable Diffusion, small enough to train on a CPU: a CLIP tokenizer learnt on the
caption words of :mod:`diffusion.datasets.shapes`, a CLIP text transformer, an
``AutoencoderKL`` and a ``UNet2DConditionModel`` with cross-attention to the text.
``python -m diffusion.train text2image`` trains them; the shipped pipeline is
``assets/models/tiny-shapes-sd``.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusion.datasets import shapes

MAX_TOKENS = 24  # longest caption is 14 tokens with its start and end marks


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """Learn a BPE on the scene vocabulary and save it as a CLIP tokenizer in ``folder``.

    The 26 letters (alone and word-final) are in the vocabulary too, so any
    lower-case word can be spelled; other characters become the unknown token.
    """
    letters = list(string.ascii_lowercase)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, initial_alphabet=letters,
                                  end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator([" ".join(shapes.vocabulary())], trainer)
    model = json.loads(bpe.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    tokens += [c + "</w>" for c in letters if c + "</w>" not in model["vocab"]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in model["merges"]))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)
    for word in shapes.vocabulary():  # the point of the exercise: one token per known word
        if len(tokenizer(word).input_ids) != 3:
            raise RuntimeError(f"the tokenizer splits the vocabulary word {word!r}")
    return tokenizer


def build_text_encoder(tokenizer: CLIPTokenizer, width: int = 64, layers: int = 3) -> CLIPTextModel:
    """A small CLIP text transformer (causal self-attention, as in CLIP and SD)."""
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                            num_hidden_layers=layers, num_attention_heads=max(1, width // 32),
                            max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def norm_groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups with at least 4 channels each (at most 8 groups).

    One channel per group would normalise every channel's spatial mean away: a flat
    background colour could then pass only through the skip connections, and the
    decoder's last norm could not put it back at all.
    """
    common = math.gcd(*channels)
    return max(g for g in range(1, 9) if g == 1 or (common % g == 0 and common // g >= 4))


def build_vae(channels: tuple[int, ...] = (16, 32, 64, 64), latent_channels: int = 8) -> AutoencoderKL:
    """``AutoencoderKL`` halving the side once per extra entry of ``channels``: 64 → 8 for four."""
    n = len(channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=channels,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=norm_groups(channels),
                         sample_size=shapes.IMAGE_SIZE)


def build_unet(channels: tuple[int, ...], cross_attention_dim: int, sample_size: int,
               latent_channels: int = 8, head_dim: int = 32, pooled_text: bool = True) -> UNet2DConditionModel:
    """The latent denoiser: cross-attention to the text at every resolution but the lowest.

    Attention heads are ``head_dim`` wide (diffusers' ``attention_head_dim`` argument
    is, for historical reasons, the number of heads per block). Eight heads of 4
    channels each, as at 32 channels with diffusers' default of 8, are too narrow to
    pick single words out of the caption (the model card tells what a run with them learnt).

    ``pooled_text`` also adds an attention-pooled summary of the caption to the
    timestep embedding (diffusers' ``addition_embed_type="text"``), so every ResNet
    block is conditioned on the words, as a class label conditions the digit model,
    not only the attention layers.
    """
    n = len(channels)
    heads = tuple(max(1, c // head_dim) for c in channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=1, cross_attention_dim=cross_attention_dim, attention_head_dim=heads,
        norm_num_groups=norm_groups(channels),
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": max(1, cross_attention_dim // head_dim)}
           if pooled_text else {}))
