"""decoder.py -- the unCLIP decoder P(x | z_i, y): a GLIDE-style diffusion U-Net that turns a CLIP
image embedding (and optionally the caption) back into an image [unCLIP] Sec. 2.1.

Symbols (names in the code -> paper)
    x_0       clean image [B, C, H, W] in [-1, 1]       x_t   the image after t+1 noising steps
    t         int64 timestep [B] in [0, T); 0 means one step of noise (as in diffusion.py)
    z_i       CLIP image embedding [B, D], unit norm    D = cfg.clip_dim
    y         the caption: token ids [B, L] and a bool mask [B, L] (True = real token, padding last)
    emb       per-sample conditioning vector [B, E], E = 4 * cfg.channels: timestep + z_i + caption
    context   tokens every attention layer also attends to [B, K, W]: caption states + 4 z_i tokens
    keep_*    bool [B]; False drops that condition. Training dropout and the unconditional half of
              classifier-free guidance [CFG] are the same code path.
    out       channels [:C] predict eps ([GLIDE], [unCLIP]), x_0 or v (cfg.mean_type); channels [C:]
              are the variance interpolation v in [-1, 1] of [IDDPM] Eq. 15 (when cfg.learn_sigma)

ADM is [ADM]'s U-Net, which [GLIDE] and [unCLIP] build on. With clip_dim=0, text_layers=0 and
attention_resolutions=() it is the upsamplers' conv-only network (upsample.py; in_channels != out_channels).
"""

import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import GaussianDiffusion, attention, cosine_betas, guide, rng_device, timestep_embedding


@dataclass
class UNetConfig:
    image_size: int = 32  # training resolution; attention_resolutions are pixel sizes at it
    in_channels: int = 3  # x_t; an upsampler concatenates the upsampled low-res image -> 6
    out_channels: int = 6  # 2 x 3: eps and the learned-range variance v [IDDPM] Sec. 3.1
    channels: int = 32  # base width (paper: 512); 32 trains on Shapes in minutes on a 2-core CPU
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width per level, 32x32, 16x16, 8x8 (toy_config: 1, 4, 4)
    num_res_blocks: int = 2  # ResBlocks per level going down (one more going up, as in ADM)
    attention_resolutions: tuple[int, ...] = (16, 8)  # not 32x32: 1024 tokens dominate a CPU step
    head_channels: int = 64  # [GLIDE]/[ADM]'s; equal FLOPs, but 32-channel heads run ~2x slower in CPU bf16
    dropout: float = 0.0  # paper: 0.1; a CPU run of minutes is far from overfitting, so off
    # Not in ADM: two input channels with each pixel's (x, y) in [-1, 1] ("CoordConv"); a conv net
    # otherwise finds where it is only from the zero padding, and position is learned last.
    coords: bool = False
    clip_dim: int = 0  # D of z_i; 0 = no image-embedding conditioning (upsamplers)
    clip_tokens: int = 4  # [unCLIP] Sec. 2.1: z_i becomes 4 extra context tokens
    # Not in [GLIDE]: z_i also projected to a map at the lowest resolution, added at the middle block
    # (as a DCGAN starts from its latent); without it a small net learns z_i -> layout slowly
    clip_map: bool = False
    map_resolutions: tuple[int, ...] = ()  # clip_map also where the down path enters these (EXPERIMENTS.md)
    text_layers: int = 0  # depth of the caption Transformer; 0 = no caption conditioning
    text_width: int = 64  # width of caption states and of every context token
    text_heads: int = 4  # attention heads in the caption Transformer
    vocab_size: int = 259  # token ids of the CLIP tokenizer: set from FrozenCLIP.vocab_size
    context_length: int = 112  # the toy CLIP's (caption + start + end): set from FrozenCLIP.context_length

    def __post_init__(self):
        # a checkpoint or a command line hands tuples back as lists
        self.channel_mults, self.attention_resolutions, self.map_resolutions = (
            tuple(a) for a in (self.channel_mults, self.attention_resolutions, self.map_resolutions))
        low = {self.image_size >> k for k in range(1, len(self.channel_mults))}
        if self.map_resolutions and not (self.clip_map and set(self.map_resolutions) <= low):
            raise ValueError(f"map_resolutions {self.map_resolutions} needs clip_map, sizes in {sorted(low)}")
        if not self.channel_mults or self.num_res_blocks < 1 or self.channels < 2 or self.channels % 2:
            raise ValueError("need even channels >= 2, num_res_blocks >= 1, non-empty channel_mults")
        if self.clip_map and not self.clip_dim:
            raise ValueError("clip_map needs clip_dim > 0 (a z_i to project)")
        if self.text_layers and self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")


@dataclass
class DecoderConfig(UNetConfig):
    clip_dim: int = 64  # the toy CLIP's embedding width: set from FrozenCLIP.embed_dim
    text_layers: int = 2  # a small caption encoder, trained with the decoder as in GLIDE
    timesteps: int = 1000  # T of the cosine schedule [IDDPM] Sec. 3.2, as in [unCLIP] Table 3
    p_drop_image: float = 0.1  # [unCLIP] Sec. 2.1: z_i replaced by a learned null 10% of the time
    p_drop_text: float = 0.5  # [unCLIP] Sec. 2.1: the caption dropped 50% of the time
    # [IDDPM] learned-range variance (out_channels = 2 C, hybrid loss); False = fixed beta~_t
    # variance and the plain eps MSE of [DDPM] (out_channels = C), for the ablation
    learn_sigma: bool = True
    # What the net predicts: "eps" ([GLIDE], [unCLIP]), "x0" or "v" [PD]. Counted as x_0 errors, the eps MSE
    # weighs step t by SNR(t), next to nothing where layout and colour are decided; the x0 MSE by 1, too
    # little for the low-noise steps that draw edges; v by 1 + SNR keeps both (README, "The decoder").
    mean_type: str = "eps"


def toy_config(**fields) -> DecoderConfig:
    """DecoderConfig() is [GLIDE]/[unCLIP]'s decoder at toy width; train_toy.py trains this preset, whose
    departures make background, position and shape learnable in CPU-minutes: v prediction [PD], coordinate
    channels, z_i maps at 8x8 and 16x16, one ResBlock a level, attention at 8x8 in two 32-channel heads,
    and 16 channels at 32x32, 64 below (README, "The decoder")."""
    toy = dict(mean_type="v", coords=True, clip_map=True, map_resolutions=(16,), num_res_blocks=1,
               attention_resolutions=(8,), head_channels=32, channels=16, channel_mults=(1, 4, 4))
    return DecoderConfig(**toy | fields)


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)  # ADM's 32 groups; gcd keeps tiny test widths legal


def zero_init(module: nn.Module) -> nn.Module:
    # Residual branches and the output start at zero, so the untrained net is the identity / eps=0.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """[IDDPM]/ADM residual block; emb scales and shifts the second norm ("adaptive group norm")."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out)  # -> scale and shift
        self.norm2, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, c_out, H, W]
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head attention of the H*W spatial tokens over themselves plus the context tokens,
    each context token projected to its own key and value (GLIDE's encoder_kv)."""

    def __init__(self, ch: int, head_channels: int, context_width: int):
        super().__init__()
        if ch % head_channels:
            raise ValueError(f"attention width {ch} is not a multiple of head_channels "
                             f"{head_channels}; change channels or head_channels")
        self.heads = ch // head_channels
        self.norm = group_norm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.context_kv = nn.Linear(context_width, 2 * ch) if context_width else None
        self.proj = zero_init(nn.Linear(ch, ch))

    def forward(self, x, context=None, context_mask=None):
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # each [B, HW, C]
        attn_mask = None
        if context is not None:
            ck, cv = self.context_kv(context).chunk(2, dim=-1)  # each [B, K, C]
            k, v = torch.cat([k, ck], dim=1), torch.cat([v, cv], dim=1)  # [B, HW+K, C]
            if context_mask is not None:  # [B, 1, 1, HW+K]: spatial keys visible, context ones where unmasked
                attn_mask = F.pad(context_mask, (H * W, 0), value=True)[:, None, None, :]
        q, k, v = (a.reshape(B, a.shape[1], self.heads, -1).transpose(1, 2) for a in (q, k, v))
        h = attention(q, k, v, attn_mask)  # [B, nh, HW, hs]
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))  # [B, HW, C]
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class TextBlock(nn.Module):
    """Pre-LayerNorm Transformer block with a causal mask (the caption encoder's layer)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        q, k, v = (a.reshape(B, L, self.heads, -1).transpose(1, 2)
                   for a in self.qkv(self.ln_1(x)).chunk(3, dim=-1))  # each [B, nh, L, hs]
        # Causal: real tokens never see the padding after the end token, and no mask row is empty
        h = attention(q, k, v, causal=True)
        x = x + self.proj(h.transpose(1, 2).reshape(B, L, W))
        return x + self.mlp(self.ln_2(x))


class CaptionEncoder(nn.Module):
    """[GLIDE] Sec. 4's text Transformer: token ids -> states [B, L, W] (context tokens for the
    attention layers) and the final (end) token's projection [B, E], added to the timestep
    embedding in place of ADM's class embedding."""

    def __init__(self, cfg: UNetConfig, emb_dim: int):
        super().__init__()
        self.cfg, W = cfg, cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, W)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, W))
        self.blocks = nn.ModuleList(TextBlock(W, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(W)
        self.to_emb = nn.Linear(W, emb_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        B, L = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:L]  # [B, L, W]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        last = (mask.sum(1) - 1).clamp(min=0)  # index of the end token, [B]
        return x, self.to_emb(x[torch.arange(B, device=x.device), last])  # [B,L,W], [B,E]

    def check(self, tokens, mask, keep):
        cfg, ok = self.cfg, tokens.dim() == 2 and len(tokens) == len(keep) and mask is not None
        if not ok or mask.shape != tokens.shape or mask.dtype != torch.bool:
            raise ValueError(f"tokens must be int64 [B={len(keep)}, L] with a bool mask of the same shape "
                             "(use FrozenCLIP.tokenize)")
        if tokens.shape[1] > cfg.context_length:
            raise ValueError(f"caption has {tokens.shape[1]} tokens, context_length {cfg.context_length}")
        if tokens.device.type != "cpu" or torch.compiler.is_compiling():
            return  # the value checks below would wait for a GPU, or break a torch.compile graph
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}); set vocab_size "
                             "from the tokenizer that produced them")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("mask must be True for a prefix of each row (padding at the end)")
        if (keep & ~mask.any(1)).any():
            raise ValueError("a kept caption has no tokens; drop it with keep_text=False")


class UNet(nn.Module):
    """ADM/GLIDE U-Net: forward(x_t [B, in, H, W], t [B], z_i, tokens, mask, keep_image,
    keep_text) -> [B, out, H, W]. Every conditioning argument is optional."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        C, E, W = cfg.channels, 4 * cfg.channels, cfg.text_width
        self.time_embed = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        context_width = W if (cfg.clip_dim or cfg.text_layers) else 0
        if cfg.clip_dim:
            # [unCLIP] Sec. 2.1: z_i is projected onto the timestep embedding and into clip_tokens context
            # tokens (Linears even when the widths match); a learned null stands in for a dropped z_i.
            self.image_to_emb = nn.Linear(cfg.clip_dim, E)
            self.image_to_tokens = nn.Linear(cfg.clip_dim, cfg.clip_tokens * W)
            self.null_image_embed = nn.Parameter(torch.randn(cfg.clip_dim) / cfg.clip_dim**0.5)
        self.text = CaptionEncoder(cfg, E) if cfg.text_layers else None

        levels = len(cfg.channel_mults)
        self.factor = 2 ** (levels - 1)  # H and W must be multiples of it

        def layer(c_in, c_out, res):
            mods = [ResBlock(c_in, c_out, E, cfg.dropout)]
            if res in cfg.attention_resolutions:
                mods.append(AttentionBlock(c_out, cfg.head_channels, context_width))
            return mods

        self.input_conv = nn.Conv2d(cfg.in_channels + 2 * cfg.coords, C, 3, padding=1)
        self.down, skips, ch, res = nn.ModuleList(), [C], C, cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList(layer(ch, mult * C, res)))
                ch = mult * C
                skips.append(ch)
            if level < levels - 1:  # downsample by a stride-2 conv
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.middle = nn.ModuleList(layer(ch, ch, res) + [ResBlock(ch, ch, E, cfg.dropout)])
        if cfg.clip_map:  # z_i -> [ch, res, res], zero-initialised: the net starts without it
            self.image_to_map = zero_init(nn.Linear(cfg.clip_dim, ch * res * res))
            self.entry_maps = nn.ModuleDict({  # level k is entered at image_size / 2^k, level k-1's width
                str(r): zero_init(nn.Linear(cfg.clip_dim, C * cfg.channel_mults[k - 1] * r * r))
                for k in range(1, levels) if (r := cfg.image_size >> k) in cfg.map_resolutions})
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):  # each consumes one skip connection
                mods = layer(ch + skips.pop(), mult * C, res)
                ch = mult * C
                if level and i == cfg.num_res_blocks:  # nearest-neighbour upsample, then conv
                    mods += [nn.Upsample(scale_factor=2.0), nn.Conv2d(ch, ch, 3, padding=1)]
                    res *= 2
                self.up.append(nn.ModuleList(mods))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def condition(self, t, z_i, tokens, mask, keep_image, keep_text):
        """-> emb [B, E], context [B, K, W] | None, context_mask [B, K] | None, √D z_i | None. No caption, no
        mask: z_i's tokens are always visible (a compiled all-True mask still costs 2.5x on a CPU)."""
        cfg, B = self.cfg, t.shape[0]
        emb = self.time_embed(timestep_embedding(t, cfg.channels))  # [B, E]
        ones = torch.ones(B, dtype=torch.bool, device=t.device)
        for name, keep in (("keep_image", keep_image), ("keep_text", keep_text)):
            if keep is not None and (keep.dtype != torch.bool or keep.shape != (B,)):
                raise ValueError(f"{name} must be a bool tensor [B={B}] (False drops it)")
        context, context_mask, z = [], [], None
        if tokens is not None:
            if self.text is None:
                raise ValueError("tokens given, but this UNet has no caption encoder (text_layers=0)")
            keep = ones if keep_text is None else keep_text
            self.text.check(tokens, mask, keep)
            states, pooled = self.text(tokens, mask)  # [B, L, W], [B, E]
            emb = emb + torch.where(keep[:, None], pooled, torch.zeros_like(pooled))
            context.append(states)
            context_mask.append(mask & keep[:, None])  # a dropped caption is invisible
        if cfg.clip_dim:
            keep = ones if keep_image is None else keep_image
            null = self.null_image_embed.expand(B, -1)
            if z_i is None:  # caption-only: the null embedding for every sample
                z_i, keep = null, ~ones
            elif z_i.shape != (B, cfg.clip_dim):
                raise ValueError(f"z_i must be [B, {cfg.clip_dim}], got {tuple(z_i.shape)}")
            # z_i's entries are ~1/√D: times √D, its projections start at the timestep embedding's size
            z = torch.where(keep[:, None], z_i, null) * cfg.clip_dim**0.5  # [B, D]
            emb = emb + self.image_to_emb(z)
            context.append(self.image_to_tokens(z).reshape(B, cfg.clip_tokens, cfg.text_width))
            context_mask.append(ones[:, None].expand(B, cfg.clip_tokens))
        elif z_i is not None:
            raise ValueError("z_i given, but this UNet has clip_dim=0; pass z_i=None")
        context = torch.cat(context, dim=1) if context else None
        return emb, context, None if tokens is None else torch.cat(context_mask, dim=1), z

    def forward(self, x_t, t, z_i=None, tokens=None, mask=None, keep_image=None, keep_text=None):
        cfg = self.cfg
        if x_t.dim() != 4 or x_t.shape[1] != cfg.in_channels:
            raise ValueError(f"x_t must be [B, {cfg.in_channels}, H, W], got {tuple(x_t.shape)}")
        if x_t.shape[2] % self.factor or x_t.shape[3] % self.factor:
            raise ValueError(f"H and W must be multiples of {self.factor}, got {tuple(x_t.shape[2:])}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be int64 [B={x_t.shape[0]}], got {tuple(t.shape)}")
        if cfg.clip_map and tuple(x_t.shape[2:]) != (cfg.image_size,) * 2:
            raise ValueError(f"clip_map needs {cfg.image_size}x{cfg.image_size} inputs, got {x_t.shape[2:]}")
        emb, context, context_mask, z = self.condition(t, z_i, tokens, mask, keep_image, keep_text)

        def run(mods, h):
            for m in mods:  # a ResBlock also reads emb, an AttentionBlock the context
                h = m(h, *{ResBlock: (emb,), AttentionBlock: (context, context_mask)}.get(type(m), ()))
            return h

        if cfg.coords:  # [B, in + 2, H, W]
            B, _, H, W = x_t.shape
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, H, device=x_t.device),
                                    torch.linspace(-1, 1, W, device=x_t.device), indexing="ij")
            x_t = torch.cat([x_t, torch.stack([xs, ys]).to(x_t.dtype).expand(B, -1, -1, -1)], dim=1)
        h = self.input_conv(x_t)  # [B, C, H, W]
        hs = [h]
        maps = self.entry_maps if cfg.clip_map else {}
        for mods in self.down:
            size, h = h.shape[-1], run(mods, h)
            if h.shape[-1] != size and str(h.shape[-1]) in maps:  # a lower level entered: its z_i map
                h = h + maps[str(h.shape[-1])](z).view(h.shape)
            hs.append(h)
        h = h + self.image_to_map(z).view(h.shape) if cfg.clip_map else h  # z_i's map (clip_map)
        h = run(self.middle, h)  # [B, ch, H/factor, W/factor]
        for mods in self.up:
            h = run(mods, torch.cat([h, hs.pop()], dim=1))
        return self.out(h)  # [B, out_channels, H, W]


class Decoder(nn.Module):
    """P(x_0 | z_i, y) [unCLIP] Sec. 2.1: the UNet as a diffusion model, [IDDPM] cosine schedule."""

    def __init__(self, cfg: DecoderConfig | None = None):
        super().__init__()
        cfg = self.cfg = cfg if cfg is not None else DecoderConfig()
        want = (2 if cfg.learn_sigma else 1) * cfg.in_channels
        if cfg.out_channels != want:
            raise ValueError(f"out_channels={cfg.out_channels}, learn_sigma={cfg.learn_sigma} needs {want}")
        if not (0 <= cfg.p_drop_image <= 1 and 0 <= cfg.p_drop_text <= 1):
            raise ValueError("p_drop_image and p_drop_text are probabilities in [0, 1]")
        self.net = UNet(cfg)
        self.diffusion = GaussianDiffusion(cosine_betas(cfg.timesteps), mean_type=cfg.mean_type,
                                           var_type="learned_range" if cfg.learn_sigma else "fixed_small")

    def _check_images(self, x_0: torch.Tensor) -> None:
        C, S = self.cfg.in_channels, self.cfg.image_size
        if x_0.dim() != 4 or tuple(x_0.shape[1:]) != (C, S, S):
            raise ValueError(f"x_0 must be [B, {C}, {S}, {S}] in [-1, 1], got {tuple(x_0.shape)}; "
                             "resize the images or set image_size")

    def loss_terms(self, x_0, z_i, tokens, mask, generator=None) -> dict:
        """Batch means of the hybrid loss and its parts: dict(loss, mse, vb), scalars. z_i and the
        caption may be None; t, the noise and both dropout masks are drawn from `generator`."""
        self._check_images(x_0)
        cfg, B, device = self.cfg, x_0.shape[0], x_0.device
        gen_device = rng_device(generator, device)
        rand = lambda: torch.rand(B, generator=generator, device=gen_device).to(device)
        # t ~ Uniform{0, ..., T-1}: one term of L_vlb = T * E_t[L_t] per sample [IDDPM] Sec. 3.1
        t = torch.randint(0, cfg.timesteps, (B,), generator=generator, device=gen_device).to(device)
        noise = torch.randn(x_0.shape, generator=generator, device=gen_device).to(device)
        # [unCLIP] Sec. 2.1: drop z_i and the caption independently (a dropped z_i becomes the null)
        keep_image, keep_text = rand() >= cfg.p_drop_image, rand() >= cfg.p_drop_text
        terms = self.diffusion.training_losses(self.net, x_0, t, noise=noise, z_i=z_i, tokens=tokens,
                                               mask=mask, keep_image=keep_image, keep_text=keep_text)
        return {name: value.mean() for name, value in terms.items()}

    def loss(self, x_0, z_i, tokens, mask, generator=None) -> torch.Tensor:
        """Scalar mean hybrid loss for a training batch (see loss_terms)."""
        return self.loss_terms(x_0, z_i, tokens, mask, generator)["loss"]

    def _model_fn(self, z_i, tokens, mask, guidance_scale: float):
        """model(x_t, t) for the samplers; with guidance, one forward on [cond; uncond]."""
        if guidance_scale == 1.0:  # [CFG] Eq. 6 with s = 1 is the conditional model
            return lambda x_t, t: self.net(x_t, t, z_i=z_i, tokens=tokens, mask=mask)
        z2, tokens2, mask2 = (None if a is None else torch.cat([a, a]) for a in (z_i, tokens, mask))

        def guided(x_t, t):
            B = x_t.shape[0]
            # first half conditional, second half with z_i and the caption both dropped
            keep = torch.arange(2 * B, device=x_t.device) < B
            out = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), z_i=z2, tokens=tokens2,
                           mask=mask2, keep_image=keep, keep_text=keep)  # [2B, 2C, S, S]
            # [CFG] Eq. 6, [GLIDE] Sec. 2.3: eps_u + s (eps_c - eps_u), variance not guided
            return guide(*out.chunk(2), guidance_scale, learned_var=self.cfg.learn_sigma)
        return guided

    @torch.no_grad()
    def sample(self, z_i, tokens, mask, steps: int = 50, guidance_scale: float = 3.0,
               eta: float | None = None, noise=None, generator=None, progress=None):
        """Images [B, C, S, S] in [-1, 1] from z_i [B, D] and/or a caption (tokens, mask [B, L]).
        steps: respaced sampling [IDDPM] Sec. 4 (the paper uses 250). eta=None is ancestral sampling
        with the learned variance, eta=float DDIM [DDIM] Eq. 12. noise: x_T. Call .eval() first."""
        sizes = {a.shape[0] for a in (z_i, tokens, noise) if a is not None}  # the batch size
        if len(sizes) != 1:
            raise ValueError(f"give z_i, tokens or noise, of one batch size (got sizes {sorted(sizes)})")
        shape = (sizes.pop(), self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must be x_T {list(shape)}, got {list(noise.shape)}")
        model_fn = self._model_fn(z_i, tokens, mask, guidance_scale)
        return self.diffusion.respace(steps).sample(model_fn, shape, eta=eta, noise=noise,
                                                    generator=generator, clip="static", progress=progress)

    @torch.no_grad()
    def invert(self, x_0, z_i, tokens, mask, steps: int = 50, guidance_scale: float = 1.0):
        """x_T [B, C, S, S] from images by deterministic DDIM inversion [DDIM] Sec. 4.3, used for
        variations and interpolations [unCLIP] Sec. 3; sample(eta=0.0, noise=x_T) with the same steps
        and guidance_scale (sample's default is 3) gives x_0 back up to a first-order error."""
        self._check_images(x_0)
        model_fn = self._model_fn(z_i, tokens, mask, guidance_scale)
        return self.diffusion.respace(steps).ddim_invert(model_fn, x_0)

    def save(self, path: str) -> None:
        """{"config", "state_dict"}, written to path.tmp and renamed: a crash never leaves half a file."""
        torch.save({"config": asdict(self.cfg), "state_dict": self.state_dict()}, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "Decoder":
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path} is not a decoder checkpoint (no config/state_dict)")
        odd = sorted(set(ckpt["config"]) ^ {f.name for f in fields(DecoderConfig)})  # a missing one would
        if odd:  # silently take its default (e.g. mean_type), and the weights would still load
            raise ValueError(f"{path}: config fields {odd} are not DecoderConfig's (another model/version?)")
        model = cls(DecoderConfig(**ckpt["config"]))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"{path}: its state_dict does not fit its DecoderConfig: {e}") from e
        # the parameters are built on the CPU; follow map_location when it names a device
        return model.to(map_location) if isinstance(map_location, str | torch.device) else model
