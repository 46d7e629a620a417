"""Speed anchor: the SPEC model's training step in PyTorch, ``torch.compile`` + SDPA, bf16 autocast.

    python bench/anchor_torch.py [--batches 64 256] [--tiny] [--no-compile]

The model of ``bench/anchor_jax.py`` (same layers, sizes and parameter count) with
``F.scaled_dot_product_attention(is_causal=True)`` (flash attention on a GPU), the model under
``torch.compile`` (forward and backward), fused AdamW (decay on matrices only) after
``clip_grad_norm_``; bf16 autocast, float32 parameters and loss; constant learning rate (a
schedule is a host-side scalar in PyTorch). Timing follows ``bench.train_step``: a first call of
``--steps-per-call`` steps (compiles), a warm call, then ``--calls`` timed calls, synchronized at
the ends of each call. NumPy + torch only: no JAX in this process.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's convention
from torch import nn

# run as a script: the repo root on the path, and not bench/ itself (its profile.py would
# shadow the standard library's, which torch imports)
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [x for x in sys.path
                                     if pathlib.Path(x or ".").resolve() != _HERE]
from bench.anchor_data import Spec, emit, lds_pool, small_spec  # noqa: E402

POOL = 8  # batches in the data pool


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, s: Spec):
        super().__init__()
        self.s = s
        self.ln_attn = nn.LayerNorm(s.d_model, eps=1e-6)
        self.qkv = nn.Linear(s.d_model, 3 * s.d_model, bias=False)
        self.out = nn.Linear(s.d_model, s.d_model, bias=False)
        self.ln_mlp = nn.LayerNorm(s.d_model, eps=1e-6)
        self.up = nn.Linear(s.d_model, s.d_ff)
        self.down = nn.Linear(s.d_ff, s.d_model)

    def forward(self, x, cos, sin):
        b, length, d = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(b, length, 3, self.s.n_heads, self.s.head_dim)
        q, k, v = qkv.unbind(2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.out(o.transpose(1, 2).reshape(b, length, d))
        return x + self.down(F.gelu(self.up(self.ln_mlp(x)), approximate="tanh"))


class Model(nn.Module):
    def __init__(self, s: Spec):
        super().__init__()
        self.s = s
        self.embed = nn.Linear(s.dim_y, s.d_model)
        self.start = nn.Parameter(torch.randn(s.d_model))
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.ln_final = nn.LayerNorm(s.d_model, eps=1e-6)
        self.proj = nn.Linear(s.d_model, s.dim_y)
        half = s.head_dim // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
        ang = torch.arange(s.seq_len, dtype=torch.float32)[:, None] * freqs[None]
        self.register_buffer("cos", torch.cos(ang)[None, :, None], persistent=False)
        self.register_buffer("sin", torch.sin(ang)[None, :, None], persistent=False)

    def forward(self, y):  # (B, T, Y) float32 -> predictions (B, T, Y); patch 1
        s, b = self.s, y.shape[0]
        # causal RevIN as in anchor_jax: stats j of y_1..y_j plus one pseudo observation (0, 1)
        zero = y.new_zeros(b, 1, s.dim_y)
        n = torch.arange(y.shape[1] + 1, device=y.device, dtype=torch.float32)[None, :, None] + 1
        mean = torch.cat([zero, torch.cumsum(y, 1)], 1) / n
        var = (torch.cat([zero, torch.cumsum(y**2, 1)], 1) + 1.0) / n - mean**2
        std = torch.sqrt(var.clamp_min(0.0) + s.eps)
        tokens = self.embed(((y - mean[:, 1:]) / std[:, 1:])[:, :-1])
        h = torch.cat([self.start.expand(b, 1, s.d_model).to(tokens.dtype), tokens], 1)
        for block in self.blocks:
            h = block(h, self.cos, self.sin)
        out = self.proj(self.ln_final(h.float()))
        return out.float() * std[:, :-1] + mean[:, :-1]


def measure(spec: Spec, batch: int, steps_per_call: int, calls: int, compile_: bool,
            device: str) -> None:
    torch.manual_seed(0)
    pool_np, weights_np = lds_pool(spec, batch, POOL)
    pool = torch.from_numpy(pool_np).to(device)
    weights_t = torch.from_numpy(weights_np).to(device)
    model = Model(spec).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=spec.lr,
                            betas=(spec.b1, spec.b2), fused=True)
    # dynamic=False: the second batch size compiles static too (not as a dynamic shape)
    forward = torch.compile(model, dynamic=False) if compile_ else model

    def step(i: int) -> torch.Tensor:
        y = pool[i % POOL]
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            pred = forward(y)
        loss = ((pred.float() - y) ** 2).sum(-1).mul(weights_t)[:, 1:].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm, foreach=True)
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    counter = iter(range(10**9))

    def call() -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        for _ in range(steps_per_call):
            loss = step(next(counter))
        value = float(loss.detach())  # waits for the device
        sync()
        return value, time.perf_counter() - start

    _, compile_s = call()
    call()
    total = 0.0
    for _ in range(calls):
        loss, dt = call()
        total += dt
    step_s = total / (calls * steps_per_call)
    emit(torch.cuda.get_device_name() if device == "cuda" else "cpu", bench="anchor_torch",
         batch=batch, patch=spec.patch, dtype="bfloat16", attention="sdpa",
         compiled=compile_, torch=torch.__version__, ms_per_step=round(step_s * 1e3, 3),
         tokens_per_s_M=round(batch * spec.seq_len / step_s / 1e6, 2),
         first_call_s=round(compile_s, 1), loss=loss,
         params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps-per-call", type=int, default=50)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="a tiny model (a CPU check)")
    p.add_argument("--no-compile", action="store_true", help="eager (where no compiler is)")
    a = p.parse_args()
    spec = small_spec() if a.tiny else Spec()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_float32_matmul_precision("high")
    for batch in a.batches:
        try:
            measure(spec, batch, a.steps_per_call, a.calls, not a.no_compile, device)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            emit(device, bench="anchor_torch", batch=batch,
                 error=f"{type(e).__name__}: {str(e)[:300]}")
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
