"""A tiny decoder config and its inputs, shared by test_decoder.py and test_decoder_sampling.py."""

import torch
import torch.nn as nn

from decoder import Decoder, DecoderConfig

# clip_dim == text_width on purpose: a projection that collapses to an identity when two widths
# match (a pitfall of open re-implementations) would show up in the tests.
TINY = dict(image_size=16, channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), head_channels=8, clip_dim=16, text_layers=1,
            text_width=16, text_heads=2, vocab_size=20, context_length=12, timesteps=100)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(seed: int = 0, scramble: float = 0.1, **overrides) -> Decoder:
    """A tiny decoder; scramble adds that much noise to every weight, so the zero-initialised
    output layers do not make every output 0 (which would let the conditioning tests pass
    vacuously). scramble=0 keeps the initialisation."""
    torch.manual_seed(seed)
    model = Decoder(DecoderConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scramble * torch.randn(p.shape, generator=seeded(seed + p.numel())))
    return model


def inputs(B: int = 4, seed: int = 0, L: int = 9):
    """x_t, t, unit z_i, and right-padded captions (end token = 19, the highest id)."""
    g = seeded(seed)
    x = torch.randn(B, 3, 16, 16, generator=g)
    t = torch.randint(0, 100, (B,), generator=g)
    z = nn.functional.normalize(torch.randn(B, 16, generator=g), dim=-1)
    lengths = torch.randint(2, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]  # [B, L]
    tokens = torch.randint(1, 19, (B, L), generator=g)
    tokens[torch.arange(B), lengths - 1] = 19
    return x, t, z, tokens * mask, mask
