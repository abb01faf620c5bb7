"""CLIP [CLIP]: a small one that trains on toy captions, freezes, and loads OpenAI's ViT weights.

unCLIP stands on a frozen CLIP ([unCLIP] Sec. 2): the caption's embedding z_t and its token states feed
the prior and the decoder; the image embedding z_i is the prior's target and the decoder's condition.
Parameter names equal the keys of OpenAI's state_dicts (`visual.conv1.weight`, ...), so released weights
load with strict=True. Imports only torch, numpy, PIL and the standard library.

Symbols
    x, y       images [B, 3, H, W] in [-1, 1]; a caption -> tokens [B, L] int64, mask [B, L] bool
    z_i, z_t   unit-norm image / text embeddings [B, D]; states [B, L, W] the text token states
    tau        learned temperature; logit_scale = log(1/tau), logits = exp(logit_scale) z_i z_t^T
"""
import functools
import gzip
import html
import math
import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# OpenAI's published preprocessing statistics (RGB, images scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPConfig:
    """Toy defaults for 32x32 Shapes on a 2-core CPU; OpenAI's ViT-B/32 is embed_dim=512,
    image_resolution=224, vision 12 x 768 with patch 32, context 77, vocab 49408, text 12 x 512."""

    embed_dim: int = 64  # D: size of z_i and z_t; the prior diffuses z_i, so keep it small
    image_resolution: int = 32  # the decoder's base resolution (Shapes at 32x32)
    vision_layers: int = 2  # with patch 8 the image is only 16 tokens: 2 blocks suffice
    vision_width: int = 128  # heads = width // 64 as in OpenAI's build (here 2)
    vision_patch_size: int = 8  # Shapes objects sit on patch corners: a patch holds a quadrant of one
    # start + caption + end: the longest Shapes caption is 20 BPE tokens, or 103 bytes (ByteTokenizer)
    context_length: int = 112
    vocab_size: int = 49408  # OpenAI's BPE vocabulary [CLIP]; the ByteTokenizer needs 259
    transformer_width: int = 64  # W: text width (1 head), also the width of the states the prior and
    # decoder read
    transformer_layers: int = 2


class QuickGELU(nn.Module):  # the GELU approximation OpenAI's CLIP was trained with
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block [CLIP] Sec. 2.4: x + attn(ln_1(x)), then x + mlp(ln_2(x)). nn.MultiheadAttention gives
    OpenAI's names; batch-first without weights it runs F.scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):  # x: (B, N, W)
        N = x.shape[1]
        # text is causal: token n sees tokens <= n (True = hidden; is_causal alone is only a hint)
        mask = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1) if self.causal else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask, is_causal=self.causal)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, causal: bool):
        super().__init__()
        heads = max(1, width // 64)  # OpenAI's build: heads of 64 channels; toy widths get one
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """[ViT] plus OpenAI's ln_pre: patches + class token -> blocks -> ln_post(class) @ proj."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width, patch, R = cfg.vision_width, cfg.vision_patch_size, cfg.image_resolution
        if R % patch:
            raise ValueError(f"image_resolution {R} is not a multiple of vision_patch_size {patch}")
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)  # one token per patch
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((R // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, causal=False)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def forward(self, x):  # x: (B, 3, R, R)
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, D) read off the class token


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        width = cfg.transformer_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.transformer = Transformer(width, cfg.transformer_layers, causal=True)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        # [CLIP] Sec. 2.5: temperature tau initialised to 0.07, learned as log(1/tau).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        for tower, w in ((self.transformer, width), (self.visual.transformer, cfg.vision_width)):
            # OpenAI's init: residual-branch outputs shrink with depth, (2 * layers)^-1/2.
            proj_std = w ** -0.5 * (2 * max(1, len(tower.resblocks))) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=w ** -0.5)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * w) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def encode_image(self, images):
        """images (B, 3, R, R), already preprocessed -> unnormalised features (B, D)."""
        return self.visual(images.to(self.visual.conv1.weight.dtype))

    def encode_text(self, tokens):
        """tokens (B, L'), L' <= context_length -> (pooled (B, D) unnormalised, states (B, L', W)). Pooled
        at the end token, the highest id of each row (OpenAI's argmax rule); the causal mask makes padding
        after it irrelevant, so callers may drop trailing padding to save compute."""
        B, L = tokens.shape
        if L > self.config.context_length:
            raise ValueError(f"tokens of length {L} > context_length {self.config.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:L]
        states = self.ln_final(self.transformer(x))  # (B, L, W)
        end = tokens.argmax(dim=-1)  # (B,)
        return states[torch.arange(B, device=tokens.device), end] @ self.text_projection, states

    def param_groups(self) -> list[dict]:
        """AdamW's groups: [CLIP] Sec. 2.5 decays the weights only, not gains, biases or the temperature."""
        params = list(self.parameters())
        return [{"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    def loss(self, images, tokens, mask):
        """The symmetric contrastive loss [CLIP] Fig. 3 of images (B, 3, R, R) in [-1, 1] and their
        captions' tokens and mask (B, L). Padding after a caption changes nothing the causal text tower
        reads: the captions go in four length-sorted groups, each cut to its longest; pairs stay paired."""
        with torch.no_grad():  # [CLIP] Sec. 2.5 clips the scale at 100 after each step; before use is alike
            self.logit_scale.clamp_(0, math.log(100))
        device = self.logit_scale.device
        lengths, order = mask.sum(1).sort()
        tokens, images = tokens[order], images[order.to(images.device)]
        z_t = torch.cat([self.encode_text(t[:, :int(n.max())].to(device))[0]
                         for t, n in zip(tokens.chunk(4), lengths.chunk(4), strict=True)])
        z_i = F.normalize(self.encode_image(images.to(device)), dim=-1)
        return clip_loss(self.logit_scale.exp() * z_i @ F.normalize(z_t, dim=-1).t())

    def forward(self, images, tokens):
        """-> (logits_per_image (B, B), logits_per_text (B, B)), as OpenAI's forward."""
        z_i = F.normalize(self.encode_image(images), dim=-1)
        z_t = F.normalize(self.encode_text(tokens)[0], dim=-1)
        logits_per_image = self.logit_scale.exp() * z_i @ z_t.t()
        return logits_per_image, logits_per_image.t()


def clip_loss(logits_per_image):
    """[CLIP] Fig. 3: mean of the cross-entropies over rows and columns; pair k is the positive."""
    labels = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


class _Tokenizer:
    """Captions -> rows [start, *encode(caption), end, 0, ...]: (tokens (B, L) int64, mask (B, L) bool).
    Subclasses set encode, start_token, end_token, vocab_size, context_length, truncate."""

    def __call__(self, captions: list[str]):
        if isinstance(captions, str):
            raise TypeError(f"pass a list of captions, not one string: [{captions!r}]")
        captions, L = list(captions), self.context_length
        if not captions:
            raise ValueError("got no captions")
        tokens = torch.zeros(len(captions), L, dtype=torch.long)
        mask = torch.zeros(len(captions), L, dtype=torch.bool)
        for row, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"caption {caption!r} is empty or not a string; give it text")
            seq = [self.start_token, *self.encode(caption), self.end_token]
            if len(seq) > L and not self.truncate:
                raise ValueError(f"caption {caption!r} needs {len(seq)} tokens with start/end, "
                                 f"over the context length {L}; shorten it or use truncate=True")
            seq = seq[:L - 1] + [self.end_token] if len(seq) > L else seq  # end stays last
            tokens[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), True
        return tokens, mask


class ByteTokenizer(_Tokenizer):
    """Toy tokenizer with no vocabulary file: UTF-8 byte b -> id b + 1, pad 0, start 257, end 258 (the
    highest id, so pooling at argmax finds it as in OpenAI's CLIP)."""

    pad_token, start_token, end_token, vocab_size = 0, 257, 258, 259

    def __init__(self, context_length: int = 112, truncate: bool = True):
        self.context_length, self.truncate = context_length, truncate

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> character table: printable Latin-1 bytes stand for themselves, the
    others for chr(256 + n); dict order fixes the ids of the 256 base tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(rest)}}


@functools.cache  # the scan of every code point takes a second: once per process
def bpe_pretokenizer() -> re.Pattern:
    r"""OpenAI's split 's|'t|...|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+ written for `re`, which lacks \p{}: N lists
    every numeral (digits and also ², ½, Ⅻ, which `re` counts as word characters), a letter is a word
    character that is neither N nor '_'. The <|startoftext|>/<|endoftext|> alternatives are left out, so a
    caption cannot inject an end token."""
    numerals = "".join(c for c in map(chr, range(0x110000)) if c.isnumeric() and not c.isalpha())
    N = f"[{re.escape(numerals)}]"
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d|(?:(?!{N})[^\W_])+|{N}|(?:[^\s\w]|_)+", re.IGNORECASE)


# OpenAI's released merges (MIT), shipped beside this file; assets/tokenizer/README.md says where from
BPE_MERGES = Path(__file__).resolve().parent / "assets" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


class BPETokenizer(_Tokenizer):
    """OpenAI's CLIP tokenizer, given its merges file (default: the released one, BPE_MERGES): with the
    released merges start = 49406 and end = 49407, the highest id. Text cleanup is html-unescape,
    whitespace collapse and lower case; OpenAI also runs ftfy, which repairs mis-decoded text ("cafÃ©")."""

    def __init__(self, merges_path: str | Path = BPE_MERGES, context_length: int = 77, truncate: bool = True):
        opener = gzip.open if str(merges_path).endswith(".gz") else open
        with opener(merges_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1:49152 - 256 - 2 + 1]  # skip the version header
        merges = [tuple(line.split()) for line in lines if len(line.split()) == 2]
        if not merges:
            raise ValueError(f"{merges_path} holds no merges ('a b' per line after a header line)")
        self.byte_encoder = bytes_to_unicode()
        base = list(self.byte_encoder.values())
        vocab = [*base, *(c + "</w>" for c in base), *map("".join, merges),
                 "<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}  # lower rank merges first
        self.start_token, self.end_token = len(vocab) - 2, len(vocab) - 1
        self.vocab_size, self.context_length, self.truncate = len(vocab), context_length, truncate
        self.cache: dict[str, list[str]] = {}
        self.pattern = bpe_pretokenizer()

    def bpe(self, word: str) -> list[str]:
        """Merge the leftmost adjacent pair of lowest rank until no pair is a merge (OpenAI merges every
        occurrence of that pair at once: the same result, as merges with the new token rank later)."""
        if word not in self.cache:
            parts = [*word[:-1], word[-1] + "</w>"]
            while len(parts) > 1:
                pairs = list(zip(parts, parts[1:], strict=False))
                i = min(range(len(pairs)), key=lambda i: self.ranks.get(pairs[i], math.inf))
                if pairs[i] not in self.ranks:
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            self.cache[word] = parts
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()
        words = ("".join(self.byte_encoder[b] for b in w.encode("utf-8")) for w in self.pattern.findall(text))
        return [self.encoder[token] for word in words for token in self.bpe(word)]


TOKENIZERS = ("bpe", "byte")  # what train_toy.py's --tokenizer names


@functools.cache  # one per (kind, length, truncate) in a process: the merges file is read once
def make_tokenizer(kind: str, context_length: int, truncate: bool = True):
    """"bpe": OpenAI's tokenizer with the released merges (BPE_MERGES), as [CLIP] reads captions; "byte":
    the ByteTokenizer, which needs no file but makes a caption ~4x as many tokens (Shapes: 52 vs 12)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer kind must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    if kind == "byte":
        return ByteTokenizer(context_length, truncate)
    return BPETokenizer(BPE_MERGES, context_length, truncate)


def tokenizer_kind(vocab_size: int) -> str:
    """The make_tokenizer kind a CLIP with this vocabulary was trained on: 259 ids the bytes', else BPE."""
    return "byte" if vocab_size == ByteTokenizer.vocab_size else "bpe"


class FrozenCLIP:
    """A CLIP in eval mode with gradients off, its work chunked by batch_size. kind="toy": images of
    exactly image_resolution, used as they are; kind="openai": [CLIP]'s preprocessing."""

    def __init__(self, model: CLIP, tokenizer, kind: str = "toy", batch_size: int = 256, device=None):
        if kind not in ("toy", "openai"):
            raise ValueError(f"kind must be 'toy' or 'openai', got {kind!r}")
        cfg = model.config
        tok, mod = (tokenizer.context_length, tokenizer.vocab_size), (cfg.context_length, cfg.vocab_size)
        if tok[0] != mod[0] or tok[1] > mod[1]:
            raise ValueError(f"the tokenizer's (context, vocab) {tok} does not fit the model's {mod}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.kind, self.batch_size = tokenizer, kind, batch_size
        self.embed_dim, self.text_width = cfg.embed_dim, cfg.transformer_width
        self.context_length, self.vocab_size = cfg.context_length, cfg.vocab_size
        self.to(device if device is not None else next(model.parameters()).device)

    def to(self, device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, captions: list[str]):
        tokens, mask = self.tokenizer(captions)
        return tokens.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def encode_text(self, captions: list[str]):
        """-> z_t (B, D) unit norm, states (B, L, W), mask (B, L)."""
        tokens, mask = self.tokenize(captions)
        outs = [self.model.encode_text(chunk) for chunk in tokens.split(self.batch_size)]
        pooled, states = (torch.cat(o).float() for o in zip(*outs, strict=True))
        return F.normalize(pooled, dim=-1), states, mask

    @torch.no_grad()
    def encode_image(self, images):
        """images (B, 3, H, W) in [-1, 1] or a list of PIL images -> z_i (B, D) unit norm."""
        x = self.preprocess(images)
        z_i = torch.cat([self.model.encode_image(chunk) for chunk in x.split(self.batch_size)])
        return F.normalize(z_i.float(), dim=-1)

    def preprocess(self, images) -> torch.Tensor:
        """Images as the model was trained on them: (B, 3, R, R), R = image_resolution."""
        R = self.model.config.image_resolution
        if isinstance(images, (list, tuple)) and images:  # PIL images, each resized on its own
            if bad := [type(im).__name__ for im in images if not isinstance(im, Image.Image)]:
                raise TypeError(f"expected a list of PIL images, got a {bad[0]} in it")
            arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1 for im in images]
            return torch.cat([self.preprocess(torch.from_numpy(a).permute(2, 0, 1)[None]) for a in arrays])
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor or a list of PIL images, got "
                             f"{getattr(images, 'shape', images)}")
        x = images.to(self.device, torch.float32)
        if x.numel() and (x.min() < -1.01 or x.max() > 1.01):
            raise ValueError(f"images must lie in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]")
        if self.kind == "toy":
            if x.shape[-2:] != (R, R):
                raise ValueError(f"the toy CLIP takes {R}x{R} images, got {tuple(x.shape[-2:])}: "
                                 "resize them (e.g. F.interpolate(..., antialias=True))")
            return x
        # [CLIP]'s preprocessing on [0, 1] RGB: bicubic resize of the short side, center crop, normalisation
        x, (H, W) = (x + 1) / 2, x.shape[-2:]
        size = (max(R, round(H * R / min(H, W))), max(R, round(W * R / min(H, W))))
        if (H, W) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True).clamp(0, 1)
        top, left = round((size[0] - R) / 2), round((size[1] - R) / 2)
        x = x[..., top:top + R, left:left + R]
        mean, std = (torch.tensor(v, device=x.device).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        return (x - mean) / std


def infer_config(state_dict) -> CLIPConfig:
    """Read the architecture off tensor shapes, as OpenAI's build_model does."""
    shape = lambda key: state_dict[key].shape
    layers = lambda tower: sum(k.startswith(tower) and k.endswith("attn.in_proj_weight") for k in state_dict)
    width, _, patch, _ = shape("visual.conv1.weight")
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)  # the class token is extra
    return CLIPConfig(
        embed_dim=shape("text_projection")[1], image_resolution=patch * grid,
        vision_layers=layers("visual.transformer."), vision_width=width, vision_patch_size=patch,
        context_length=shape("positional_embedding")[0], vocab_size=shape("token_embedding.weight")[0],
        transformer_width=shape("ln_final.weight")[0], transformer_layers=layers("transformer."))


def load_openai(path: str, device="cpu") -> CLIP:
    """Load an OpenAI CLIP ViT checkpoint: the released TorchScript archive (e.g. ViT-B-32.pt) or a plain
    state_dict. Weights become fp32; the config is inferred from shapes; strict load."""
    only = "only OpenAI CLIP ViT checkpoints (ViT-B/32, ViT-B/16, ViT-L/14, ...) are supported"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:  # the released files are TorchScript archives: we keep only their weights
        state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is neither a TorchScript archive nor a state_dict saved with "
                             f"torch.save ({type(e).__name__}); {only}") from e
    if isinstance(state_dict, dict) and any(k.startswith("visual.layer1") for k in state_dict):
        raise ValueError(f"{path} is a ResNet CLIP (RN50 family); {only}")
    needed = ("visual.conv1.weight", "visual.positional_embedding", "text_projection",
              "positional_embedding", "token_embedding.weight", "ln_final.weight")  # infer_config's
    if missing := [k for k in needed if not isinstance(state_dict, dict) or k not in state_dict]:
        raise ValueError(f"{path} is not a CLIP ViT state_dict (missing {missing}); {only}")
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()
                  if k not in ("input_resolution", "context_length", "vocab_size")}
    model = CLIP(infer_config(state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def save_clip(model: CLIP, path: str):
    """Write {"config", "state_dict"} atomically: a crash mid-write leaves the old file intact."""
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_clip(path: str, map_location="cpu") -> CLIP:
    ckpt = torch.load(path, map_location=map_location, weights_only=True)  # never runs pickled code
    if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= ckpt.keys():
        raise ValueError(f"{path} is not a tinyunclip CLIP checkpoint {{'config', 'state_dict'}}; "
                         "for OpenAI's released weights use load_openai")
    model = CLIP(CLIPConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(map_location)
