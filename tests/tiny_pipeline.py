"""Tiny randomly initialised unCLIP stages (no training) for test_unclip.py and test_unclip_cli.py.

Zero-initialised output layers would make an untrained decoder ignore its weights and its
conditioning, so every parameter is perturbed: outputs then depend on weights, z_i and noise, and
a test that compares outputs can fail."""

import torch
import torch.nn.functional as F

from clip_frozen import CLIP, CLIPConfig, FrozenCLIP, make_tokenizer
from decoder import Decoder, DecoderConfig
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from upsample import Upsampler, UpsamplerConfig

D, L = 16, 24  # CLIP embedding size, context length


def perturb(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


def parts(seed=0, ar=False, tokenizer="byte"):
    """CLIP, prior, decoder and two upsamplers (8 -> 16 -> 32), all tiny and random; tokenizer: a
    clip_frozen.make_tokenizer kind (the CLIP's and the decoder's vocabulary follow it)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(tokenizer, L)
    clip = CLIP(CLIPConfig(embed_dim=D, image_resolution=8, vision_layers=1, vision_width=32,
                           vision_patch_size=4, context_length=L, vocab_size=tok.vocab_size,
                           transformer_width=32, transformer_layers=1))
    if ar:
        prior = ARPrior(ARPriorConfig(clip_dim=D, text_width=32, width=32, layers=1, heads=2,
                                      pca_dims=4, buckets=16))
        g = torch.Generator().manual_seed(seed)
        prior.fit_codebook(F.normalize(torch.randn(64, D, generator=g), dim=-1),
                           F.normalize(torch.randn(64, D, generator=g), dim=-1))
    else:
        prior = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=32, width=32,
                                                    layers=1, heads=2))
    decoder = Decoder(DecoderConfig(image_size=8, channels=16, channel_mults=(1, 2),
                                    num_res_blocks=1, attention_resolutions=(4,),
                                    head_channels=16, clip_dim=D, text_layers=1, text_width=16,
                                    text_heads=2, vocab_size=tok.vocab_size, context_length=L))
    ups = [Upsampler(UpsamplerConfig(low_res=lo, high_res=2 * lo, channels=8,
                                     channel_mults=(1, 2), sample_steps=2)) for lo in (8, 16)]
    for i, m in enumerate([clip, prior, decoder, *ups]):
        perturb(m, seed * 10 + i)
    return FrozenCLIP(clip, tok), prior, decoder, ups
