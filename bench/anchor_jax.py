"""Speed anchor: a straightforward JAX/Flax/Optax implementation of the SPEC model's training step.

    python -m bench.anchor_jax [--batches 64 256] [--attention einsum cudnn] [--tiny]

The model of ``models/`` (pre-LN transformer, 4 layers, d_model 256, 4 heads, d_ff 1024, RoPE,
causal softmax attention, tanh-GELU MLP, causal RevIN, learned start token, patch 1) written the
plain way: one fused qkv matmul sliced into q, k, v, ``einsum`` softmax attention (or
``jax.nn.dot_product_attention``), no remat, ``optax.adamw`` with a decay mask behind
``optax.clip_by_global_norm``, warmup + cosine schedule. bf16 compute, float32 params and loss.
Timing is ``bench.train_step``'s: ``--steps-per-call`` steps per dispatch (``lax.scan``,
donated state), a compile call and a warm call, then ``--calls`` timed dispatches. Data: a
fixed pool of host-sampled batches (bench/anchor_data.py), indexed by step.
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bench.anchor_data import Spec, emit, lds_pool, small_spec

POOL = 8  # batches in the data pool


def rope(x, positions):
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
    ang = positions[:, None].astype(jnp.float32) * freqs[None]
    sin, cos = jnp.sin(ang)[None, :, None], jnp.cos(ang)[None, :, None]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def attention(q, k, v, kind: str):
    if kind == "einsum":
        scores = jnp.einsum("blhk,bshk->bhls", q, k) / math.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
        w = jax.nn.softmax(jnp.where(causal, scores.astype(jnp.float32), -1e30), -1)
        return jnp.einsum("bhls,bshk->blhk", w.astype(v.dtype), v)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation=None if kind == "xla" else kind)


class Block(nn.Module):
    spec: Spec
    dtype: jnp.dtype
    attn: str

    @nn.compact
    def __call__(self, x):
        s = self.spec
        pos = jnp.arange(x.shape[1])
        h = nn.LayerNorm()(x.astype(jnp.float32)).astype(self.dtype)
        qkv = nn.DenseGeneral((3, s.n_heads, s.head_dim), use_bias=False, dtype=self.dtype)(h)
        q, k, v = rope(qkv[:, :, 0], pos), rope(qkv[:, :, 1], pos), qkv[:, :, 2]
        o = attention(q, k, v, self.attn)
        x = x + nn.DenseGeneral(s.d_model, axis=(-2, -1), use_bias=False, dtype=self.dtype)(o)
        h = nn.LayerNorm()(x.astype(jnp.float32)).astype(self.dtype)
        h = nn.Dense(s.d_model, dtype=self.dtype)(nn.gelu(nn.Dense(s.d_ff, dtype=self.dtype)(h)))
        return x + h


class Model(nn.Module):
    spec: Spec
    dtype: jnp.dtype
    attn: str

    @nn.compact
    def __call__(self, y):  # (B, T, Y) -> predictions (B, T, Y); patch 1
        s = self.spec
        b = y.shape[0]
        # causal RevIN: stats j of y_1..y_j (j = 0..T) with one pseudo observation (0, 1);
        # token k carries y_k normalized by stats k and predicts y_{k+1} scaled by stats k
        zero = jnp.zeros((b, 1, s.dim_y))
        n = jnp.arange(y.shape[1] + 1, dtype=jnp.float32)[None, :, None] + 1.0
        mean = jnp.concatenate([zero, jnp.cumsum(y, 1)], 1) / n
        var = (jnp.concatenate([zero, jnp.cumsum(y**2, 1)], 1) + 1.0) / n - mean**2
        std = jnp.sqrt(jnp.maximum(var, 0.0) + s.eps)
        tokens = nn.Dense(s.d_model)(((y - mean[:, 1:]) / std[:, 1:])[:, :-1])
        start = self.param("start", nn.initializers.normal(1.0), (s.d_model,))
        h = jnp.concatenate([jnp.broadcast_to(start, (b, 1, s.d_model)), tokens], 1)
        h = h.astype(self.dtype)
        for _ in range(s.n_layers):
            h = Block(s, self.dtype, self.attn)(h)
        out = nn.Dense(s.dim_y)(nn.LayerNorm()(h.astype(jnp.float32)))
        return out * std[:, :-1] + mean[:, :-1]


def make_train(spec: Spec, model: Model, weights_t, pool, total_steps: int):
    sched = optax.warmup_cosine_decay_schedule(0.0, spec.lr, max(1, total_steps // 20),
                                               total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(spec.clip_norm),
        optax.adamw(sched, spec.b1, spec.b2, weight_decay=spec.weight_decay,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))

    def loss_fn(params, y):
        pred = model.apply(params, y)
        err = jnp.sum((pred.astype(jnp.float32) - y) ** 2, -1) * weights_t
        return jnp.mean(err[:, 1:])

    def step(carry, _):
        params, opt_state, i = carry
        y = pool[i % pool.shape[0]]
        loss, grads = jax.value_and_grad(loss_fn)(params, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, i + 1), loss

    @functools.partial(jax.jit, static_argnames="n", donate_argnums=0)
    def train(carry, n: int):
        carry, losses = jax.lax.scan(step, carry, None, length=n)
        return carry, losses.mean()

    return tx, train


def measure(spec: Spec, batch: int, dtype: str, attn: str, steps_per_call: int, calls: int):
    model = Model(spec, getattr(jnp, dtype), attn)
    pool_np, weights_np = lds_pool(spec, batch, POOL)
    pool, weights_t = jnp.asarray(pool_np), jnp.asarray(weights_np)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), pool[0])
    tx, train = make_train(spec, model, weights_t, pool, 10**6)
    carry = (params, tx.init(params), jnp.zeros((), jnp.int32))

    def call(c):
        start = time.perf_counter()
        c, loss = train(c, steps_per_call)
        return c, float(jax.block_until_ready(loss)), time.perf_counter() - start

    carry, _, compile_s = call(carry)
    carry, _, _ = call(carry)
    total = 0.0
    for _ in range(calls):
        carry, loss, dt = call(carry)
        total += dt
    step_s = total / (calls * steps_per_call)
    emit(jax.devices()[0].device_kind, bench="anchor_jax", batch=batch, patch=spec.patch,
         dtype=dtype, attention=attn, ms_per_step=round(step_s * 1e3, 3),
         tokens_per_s_M=round(batch * spec.seq_len / step_s / 1e6, 2),
         first_call_s=round(compile_s, 1), loss=loss,
         params_M=round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attention", nargs="+", default=["einsum"],
                   help="einsum (softmax by hand) | xla | cudnn (jax.nn.dot_product_attention)")
    p.add_argument("--steps-per-call", type=int, default=50)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="a tiny model (a CPU check)")
    a = p.parse_args()
    spec = small_spec() if a.tiny else Spec()
    for attn in a.attention:
        for batch in a.batches:
            try:
                measure(spec, batch, a.dtype, attn, a.steps_per_call, a.calls)
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                emit(jax.devices()[0].device_kind, bench="anchor_jax", batch=batch,
                     attention=attn, error=f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
