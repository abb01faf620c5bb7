"""The prior P(z_i | y) of unCLIP [unCLIP] Sec. 2.2: a diffusion prior and an autoregressive prior.

Both read a caption through the frozen CLIP (its token states and z_t) and generate a CLIP image
embedding z_i, which the decoder then turns into an image.

Symbols
    y       caption; the frozen CLIP gives its token states [B, L, W], mask [B, L] (True = real)
    z_t     CLIP text embedding of y, unit norm [B, D]
    z_i     CLIP image embedding, unit norm [B, D]; what a prior generates
    x_0     z_i * sqrt(D), the vector the diffusion prior diffuses (about unit variance per entry)
    x_t     x_0 noised to diffusion step t, t in [0, T)
    keep    bool [B]; False drops the caption (tokens and z_t) for classifier-free guidance [CFG]
    s       guidance scale; s = 1 is the plain conditional model
    d, K    AR prior: PCA components kept, quantization buckets per component
"""

import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import GaussianDiffusion, attention, cosine_betas, guide, rng_device, timestep_embedding

# ----------------------------------------------------------------------------- shared pieces


def attention_mask(valid):
    """valid [B, S] bool (False = padding or dropped caption) -> mask [B, 1, S, S], True = attend.

    Causal (query i sees keys j <= i), padded keys hidden. Every query also sees itself, so a padded
    or dropped position never has an empty row (softmax over nothing is NaN); since it is masked as
    a key, what it computes never reaches a real position.
    """
    S = valid.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=valid.device).tril()
    self_only = torch.eye(S, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | self_only)[:, None]


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x, mask, last=None):
        """x [B, S, C] -> [B, S, C]; with `last`, only the last `last` positions [B, last, C]:
        they still attend to every key, but no other position's output is computed."""
        B, S, C = x.shape
        qkv = self.qkv(self.ln_1(x)).view(B, S, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, S, hs)
        if last is not None:
            x, q, mask = x[:, -last:], q[:, :, -last:], mask[:, :, -last:]
        a = attention(q, k, v, mask)  # (B, nh, S or last, hs)
        x = x + self.proj(a.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Decoder-only Transformer: [B, S, C] tokens + valid [B, S] -> [B, S, C]."""

    def __init__(self, width, layers, heads):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, x, valid, last=None):
        """With `last`, returns only the last `last` positions [B, last, C]. A causal stack reads
        every position's keys in every layer, but the caller reads only these outputs: the last
        block computes them alone (the rest of its rows would be discarded)."""
        mask = attention_mask(valid)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last if i == len(self.blocks) - 1 else None)
        return self.ln_f(x)


def best_of(candidates, z_t):
    """candidates [B, k, D] unit, z_t [B, D] -> [B, D]: per row the candidate with the largest
    z_i . z_t. [unCLIP] Sec. 2.2: "generating two samples of z_i and selecting the one with a
    higher dot product with z_t"."""
    best = torch.einsum("bkd,bd->bk", candidates, z_t).argmax(1)  # (B,)
    return candidates[torch.arange(len(best), device=best.device), best]


def trim_padding(states, mask):
    """Drop the columns that are padding in every row. Padded keys are masked anyway, so the
    result is the same (see the padding-invariance test) for less work: a Shapes caption fills
    about 52 of the toy CLIP's 112 byte positions (a batch of 64 keeps about 85), and the text
    is most of the sequence."""
    n = int(mask.any(0).nonzero().max()) + 1
    return states[:, :n], mask[:, :n]


class _Prior(nn.Module):
    """What both priors share: caption embedding, the Transformer, checks, keep-masks, save/load."""

    config_class: type

    def __init__(self, cfg):
        super().__init__()
        if cfg.width % cfg.heads or cfg.width % 2:
            raise ValueError(f"width {cfg.width} must be even and divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.text_proj = nn.Linear(cfg.text_width, cfg.width)
        self.zt_proj = nn.Linear(cfg.clip_dim, cfg.width)
        # Stands in for z_t when the caption is dropped; the text tokens are then hidden as keys.
        self.null_zt = nn.Parameter(torch.zeros(cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)

    def embed_caption(self, z_t, states, mask, keep):
        """-> text tokens [B, L, C], z_t token [B, C], valid [B, L].

        No position embedding on the text: the CLIP token states already carry position, so the
        tokens after the text do not depend on L, and extra padding changes nothing."""
        text = self.text_proj(states)  # (B, L, C)
        zt = torch.where(keep[:, None], self.zt_proj(z_t), self.null_zt)  # (B, C)
        return text, zt, mask & keep[:, None]

    def keep_mask(self, batch, generator, device):
        """[CFG]: keep the caption with probability 1 - cond_drop; False rows train the
        unconditional model that guidance later asks for with keep=False."""
        u = torch.rand(batch, generator=generator, device=rng_device(generator, device))
        return u.to(device) >= self.cfg.cond_drop

    def check(self, z_t, states, mask, z_i=None, candidates=1):
        D, W = self.cfg.clip_dim, self.cfg.text_width
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if z_t.ndim != 2 or z_t.shape[1] != D:
            raise ValueError(f"z_t must be [B, {D}] (cfg.clip_dim), got {tuple(z_t.shape)}")
        if z_i is not None and z_i.shape != z_t.shape:
            raise ValueError(f"z_i must be [B, {D}] like z_t, got {tuple(z_i.shape)}")
        if states.ndim != 3 or states.shape[0] != len(z_t) or states.shape[2] != W:
            raise ValueError(f"states must be [{len(z_t)}, L, {W}] (cfg.text_width), "
                             f"got {tuple(states.shape)}")
        if mask.dtype != torch.bool or mask.shape != states.shape[:2]:
            raise ValueError(f"mask must be bool [B, L] = {tuple(states.shape[:2])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if not mask.any(1).all():
            raise ValueError("empty caption: each row of mask needs at least one real (True) token")

    def save(self, path):
        """Write {"config", "state_dict"} atomically: a failed write never clobbers an old file."""
        tmp = f"{path}.tmp"
        torch.save({"config": asdict(self.cfg), "state_dict": self.state_dict()}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, map_location="cpu"):
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        expected = {f.name for f in fields(cls.config_class)}
        if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= ckpt.keys():
            raise ValueError(f"{path} is not a {cls.__name__} checkpoint (no config/state_dict)")
        if set(ckpt["config"]) != expected:
            raise ValueError(
                f"{path} is not a {cls.__name__} checkpoint of this version: its config has fields "
                f"{sorted(ckpt['config'])}, {cls.config_class.__name__} has {sorted(expected)}")
        state = ckpt["state_dict"]
        model = cls(cls.config_class(**ckpt["config"])).to(next(iter(state.values())).device)
        model.load_state_dict(state)
        return model


# ----------------------------------------------------------------------------- diffusion prior


@dataclass
class DiffusionPriorConfig:
    clip_dim: int = 64  # D, the frozen CLIP's embedding size (paper: 1024, ViT-H/16)
    text_width: int = 128  # W, width of the CLIP text token states (train_toy sets it from its CLIP: 64)
    width: int = 64  # Transformer width: toy size, a 2-core CPU trains it in minutes (paper: 1B)
    layers: int = 2  # Transformer depth; the CLIP token states already did most of the reading
    heads: int = 2  # attention heads (width / heads = 32 channels each)
    timesteps: int = 1000  # T; [unCLIP] Table 3: 1000 steps, cosine schedule
    cond_drop: float = 0.1  # [unCLIP] Sec. 2.2: caption dropped 10% of the time, for guidance


class DiffusionPrior(_Prior):
    """[unCLIP] Sec. 2.2: a causal Transformer over [text tokens, z_t, step, x_t, query] whose
    query output predicts x_0 directly (x_0 parameterization, MSE), cosine schedule."""

    config_class = DiffusionPriorConfig

    def __init__(self, cfg=None):
        cfg = cfg or DiffusionPriorConfig()
        super().__init__(cfg)
        C, D = cfg.width, cfg.clip_dim
        self.time_mlp = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.x_proj = nn.Linear(D, C)
        self.query = nn.Parameter(torch.randn(C) * 0.02)
        # Tells the four tokens after the text apart: z_t, step, x_t, query.
        self.tail_pos = nn.Parameter(torch.randn(4, C) * 0.02)
        self.out = nn.Linear(C, D)
        # [IDDPM] cosine schedule. Reverse steps use the posterior variance beta~_t (fixed_small,
        # [DDPM] Sec. 3.2); [unCLIP] Table 3 samples the prior with an analytic variance
        # (Analytic-DPM), which this is not
        self.diffusion = GaussianDiffusion(cosine_betas(cfg.timesteps), mean_type="x0",
                                           var_type="fixed_small")

    def forward(self, x_t, t, z_t, states, mask, keep):
        """x_t [B, D] (sqrt(D) scale), t int64 [B], caption, keep [B] -> predicted x_0 [B, D]."""
        B, L = mask.shape
        text, zt, valid = self.embed_caption(z_t, states, mask, keep)
        step = self.time_mlp(timestep_embedding(t, self.cfg.width))  # (B, C)
        # x_t and the step are never dropped: the unconditional branch must still denoise.
        tail = torch.stack([zt, step, self.x_proj(x_t), self.query.expand(B, -1)], 1)  # (B, 4, C)
        h = torch.cat([text, tail + self.tail_pos], 1)  # (B, L + 4, C)
        h = self.transformer(h, torch.cat([valid, valid.new_ones(B, 4)], 1), last=1)  # (B, 1, C)
        return self.out(h[:, 0])  # the query token's output: x_0

    def loss(self, z_i, z_t, states, mask, generator=None):
        """Mean x_0-MSE over the batch at uniform random steps, caption dropped 10% of the time."""
        self.check(z_t, states, mask, z_i)
        states, mask = trim_padding(states, mask)
        B, dev = len(z_i), z_i.device
        x_0 = F.normalize(z_i, dim=-1) * math.sqrt(self.cfg.clip_dim)  # about unit variance per coordinate
        rng = rng_device(generator, dev)
        t = torch.randint(0, self.cfg.timesteps, (B,), generator=generator, device=rng).to(dev)
        noise = torch.randn(x_0.shape, generator=generator, device=rng).to(x_0)
        keep = self.keep_mask(B, generator, dev)
        terms = self.diffusion.training_losses(self, x_0, t, noise=noise, z_t=z_t, states=states,
                                               mask=mask, keep=keep)
        return terms["loss"].mean()

    def guided(self, x_t, t, z_t, states, mask, scale):
        """[CFG] x_0_u + s (x_0_c - x_0_u), both halves in one batch. Guiding x_0 equals guiding
        eps here: at fixed x_t, eps is an affine function of x_0."""
        keep = torch.ones(len(x_t), dtype=torch.bool, device=x_t.device)
        if scale == 1.0:
            return self(x_t, t, z_t, states, mask, keep)
        out = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([z_t, z_t]),
                   torch.cat([states, states]), torch.cat([mask, mask]), torch.cat([keep, ~keep]))
        return guide(*out.chunk(2), scale, learned_var=False)

    @torch.no_grad()
    def sample(self, z_t, states, mask, steps=64, guidance_scale=1.0, candidates=2, eta=None,
               generator=None):
        """-> z_i [B, D] unit. `steps` respaced steps, DDPM (eta=None) or DDIM(eta); all k
        candidates per caption run in one batch, and the one closest to z_t is kept."""
        self.check(z_t, states, mask, candidates=candidates)
        states, mask = trim_padding(states, mask)
        B, k, D = len(z_t), candidates, self.cfg.clip_dim
        # Candidate index varies fastest: rows b*k .. b*k+k-1 belong to caption b.
        zt_k, states_k, mask_k = (v.repeat_interleave(k, 0) for v in (z_t, states, mask))

        def model_fn(x_t, t):
            return self.guided(x_t, t, zt_k, states_k, mask_k, guidance_scale)

        x_0 = self.diffusion.respace(steps).sample(model_fn, (B * k, D), eta=eta,
                                                   generator=generator, clip="none")
        return best_of(F.normalize(x_0, dim=-1).view(B, k, D), z_t)


# ----------------------------------------------------------------------------- AR prior


@dataclass
class ARPriorConfig:
    clip_dim: int = 64  # D, the frozen CLIP's embedding size
    text_width: int = 128  # W, width of the CLIP text token states (train_toy sets it from its CLIP: 64)
    width: int = 64  # Transformer width (toy; paper: 1B params)
    layers: int = 2  # Transformer depth
    heads: int = 2  # attention heads (32 channels each)
    pca_dims: int = 32  # d, PCA components kept ([unCLIP] Sec. 2.2: 319 of 1024); check the
    #                     variance fraction that fit_codebook returns on your z_i (aim >= 0.99)
    buckets: int = 1024  # K, quantization buckets per component and for z_i . z_t (paper: 1024)
    cond_drop: float = 0.1  # [unCLIP] Sec. 2.2: caption dropped 10% of the time, for guidance


def top_half(probs):
    """probs [B, K] over tokens ordered by value -> the distribution restricted to its upper half
    (tokens j with P(token > j) < 1/2, i.e. the median and above), renormalized."""
    above = probs.flip(-1).cumsum(-1).flip(-1) - probs  # P(token > j)
    kept = probs * (above < 0.5)
    return kept / kept.sum(-1, keepdim=True)


class ARPrior(_Prior):
    """[unCLIP] Sec. 2.2: z_i -> PCA (d components, by eigenvalue) -> K-bucket tokens, with a
    token for the quantized z_i . z_t prepended; a causal Transformer predicts the tokens after
    the prefix [text tokens, z_t]. Call fit_codebook once before loss/sample."""

    config_class = ARPriorConfig

    def __init__(self, cfg=None):
        cfg = cfg or ARPriorConfig()
        super().__init__(cfg)
        C, D, d, K = cfg.width, cfg.clip_dim, cfg.pca_dims, cfg.buckets
        if not 0 < d <= D:
            raise ValueError(f"pca_dims must be in [1, clip_dim={D}], got {d}")
        self.tok_emb = nn.Embedding(K, C)  # one table; tail_pos tells the components apart
        self.tail_pos = nn.Parameter(torch.randn(d + 1, C) * 0.02)  # z_t, dot, c_1 .. c_{d-1}
        self.head = nn.Linear(C, K)
        # The codebook lives in buffers so that it is saved and moved with the weights.
        self.register_buffer("pca_mean", torch.zeros(D))  # mean z_i
        self.register_buffer("pca_basis", torch.zeros(d, D))  # rows: components, largest first
        self.register_buffer("edges", torch.zeros(d + 1, K + 1))  # row 0: z_i.z_t, then c_1..c_d
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_codebook(self, z_i_bank, z_t_bank):
        """Fit PCA on z_i [N, D] and bucket edges on data quantiles (each bucket holds about N/K
        samples). Returns the fraction of z_i variance the d kept components explain."""
        N, d, K = len(z_i_bank), self.cfg.pca_dims, self.cfg.buckets
        if N <= d or z_t_bank.shape != z_i_bank.shape:
            raise ValueError(f"need z_i_bank and z_t_bank both [N, D] with N > pca_dims={d}, got "
                             f"{tuple(z_i_bank.shape)} and {tuple(z_t_bank.shape)}")
        z = F.normalize(z_i_bank.detach().cpu().double(), dim=-1)  # float64 on CPU (MPS has none)
        mean = z.mean(0)
        cov = (z - mean).T @ (z - mean) / (N - 1)  # (D, D)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = eigvals.argsort(descending=True)
        basis = eigvecs[:, order[:d]].T  # (d, D)
        dots = (z * F.normalize(z_t_bank.detach().cpu().double(), dim=-1)).sum(-1, keepdim=True)
        values = torch.cat([dots, (z - mean) @ basis.T], 1)  # (N, d + 1)
        quantiles = torch.linspace(0, 1, K + 1, dtype=torch.float64)
        edges = torch.quantile(values, quantiles, dim=0).T  # (d + 1, K + 1)
        for name, value in [("pca_mean", mean), ("pca_basis", basis), ("edges", edges)]:
            getattr(self, name).copy_(value)
        self.fitted.fill_(True)
        return (eigvals[order[:d]].sum() / eigvals.sum()).item()

    def require_codebook(self):
        if not self.fitted:
            raise RuntimeError("ARPrior has no codebook yet: call fit_codebook(z_i_bank, "
                               "z_t_bank) on training embeddings first")

    def encode(self, z_i, z_t):
        """z_i, z_t [B, D] -> tokens [B, d + 1] in [0, K): the z_i.z_t bucket, then components."""
        self.require_codebook()
        z_i = F.normalize(z_i, dim=-1)
        dots = (z_i * F.normalize(z_t, dim=-1)).sum(-1, keepdim=True)
        values = torch.cat([dots, (z_i - self.pca_mean) @ self.pca_basis.T], 1)  # (B, d + 1)
        # Bucket j holds edges[j] <= v < edges[j + 1]; values outside the data range clamp.
        inner = self.edges[:, 1:-1].contiguous()  # (d + 1, K - 1)
        return torch.searchsorted(inner, values.T.contiguous(), right=True).T

    def decode(self, tokens):
        """tokens [B, d + 1] -> z_i [B, D] unit: bucket centres -> inverse PCA -> normalize."""
        centres = (self.edges[1:, :-1] + self.edges[1:, 1:]) / 2  # (d, K)
        coeffs = centres.gather(1, tokens[:, 1:].T).T  # (B, d)
        return F.normalize(coeffs @ self.pca_basis + self.pca_mean, dim=-1)

    def forward(self, tokens, z_t, states, mask, keep):
        """tokens [B, n] (n <= d), caption, keep [B] -> logits [B, n + 1, K]: position i predicts
        token i (0 = the z_i.z_t token) from the caption and tokens < i."""
        B, L = mask.shape
        n = tokens.shape[1]
        text, zt, valid = self.embed_caption(z_t, states, mask, keep)
        tail = torch.cat([zt[:, None], self.tok_emb(tokens)], 1) + self.tail_pos[: n + 1]
        valid = torch.cat([valid, valid.new_ones(B, n + 1)], 1)
        h = self.transformer(torch.cat([text, tail], 1), valid, last=n + 1)  # (B, n + 1, C)
        return self.head(h)

    def loss(self, z_i, z_t, states, mask, generator=None):
        """Mean cross-entropy of the d + 1 tokens (teacher forcing), caption dropped 10%."""
        self.check(z_t, states, mask, z_i)
        states, mask = trim_padding(states, mask)
        tokens = self.encode(z_i, z_t)  # (B, d + 1)
        keep = self.keep_mask(len(z_i), generator, z_i.device)
        logits = self(tokens[:, :-1], z_t, states, mask, keep)  # (B, d + 1, K)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    def guided(self, tokens, z_t, states, mask, scale):
        """[CFG] on log-probabilities: log p_u + s (log p_c - log p_u), both halves in one batch."""
        keep = torch.ones(len(tokens), dtype=torch.bool, device=tokens.device)
        if scale == 1.0:
            return self(tokens, z_t, states, mask, keep).log_softmax(-1)
        out = self(torch.cat([tokens, tokens]), torch.cat([z_t, z_t]), torch.cat([states, states]),
                   torch.cat([mask, mask]), torch.cat([keep, ~keep])).log_softmax(-1)
        return guide(*out.chunk(2), scale, learned_var=False)

    @torch.no_grad()
    def sample(self, z_t, states, mask, guidance_scale=1.0, candidates=1, temperature=1.0,
               generator=None):
        """-> z_i [B, D] unit, token by token (no KV cache: each step reruns the prefix)."""
        self.check(z_t, states, mask, candidates=candidates)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        states, mask = trim_padding(states, mask)
        self.require_codebook()
        B, k = len(z_t), candidates
        zt_k, states_k, mask_k = (v.repeat_interleave(k, 0) for v in (z_t, states, mask))
        tokens = torch.zeros(B * k, 0, dtype=torch.long, device=z_t.device)
        for i in range(self.cfg.pca_dims + 1):
            logp = self.guided(tokens, zt_k, states_k, mask_k, guidance_scale)[:, -1]  # (Bk, K)
            probs = (logp / temperature).softmax(-1)
            if i == 0:  # [unCLIP] Sec. 2.2: draw z_i.z_t from the top half, favouring good fits
                probs = top_half(probs)
            probs = probs.to(rng_device(generator, probs.device))
            token = torch.multinomial(probs, 1, generator=generator)  # (Bk, 1)
            tokens = torch.cat([tokens, token.to(tokens.device)], 1)
        return best_of(self.decode(tokens).view(B, k, -1), z_t)
