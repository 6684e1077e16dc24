#!/usr/bin/env python3
"""PyTorch reference figures for `luthier bench gpu` (experiments/runner/bench_gpu.c), which runs
this script itself on the same GPU, after its own measurements; by hand, from the repository root:

    python3 scripts/bench_gpu_reference.py [--case NAME|all] [--iters 10] [--device cuda]

Prints a JSON line {"gpu": ..., "torch": ...}, then one line per case, implementation and dtype:
{"case": ..., "impl": ..., "dtype": "bf16"|"f32", "fwd_s": ..., "fwdbwd_s": ..., "note": ...} or
{"case": ..., "impl": ..., "dtype": ..., "error": "why"}; other lines are diagnostics. The cases
and the timing are bench_gpu.c's (keep the two in step):

  attn-qwen3-t2048  SDPA, B 8, T 2048, 16 query / 8 key-value heads, d 128, causal, bf16
  attn-qwen3-t8192  the same at B 4, T 8192
  attn-zipformer    SDPA, B 32, T 512, 4 heads, d 64, not causal, bf16
      impl "flash" (sdpa_kernel(SDPBackend.FLASH_ATTENTION)) and "cudnn"
      (SDPBackend.CUDNN_ATTENTION); q, k, v [B, H, T, d] contiguous, values U(-1, 1). Grouped
      heads by enable_gqa=True; a backend that refuses it gets k and v repeated to the query heads
      before timing (untimed, gradients taken for the repeated k and v), and the line says so in
      "note". A backend that cannot run the case reports an error.
  dwconv-k31        depthwise conv1d (groups = C = 384), kernel 31, padding 15, stride 1, with
                    bias, x [32, 384, 500]; F.conv1d (cuDNN, TF32 off), bf16 and f32; impl "torch"
  dwconv-k31-s2     the same with stride 2 (T 500 -> 250)
  downsample-x2     icefall's SimpleDownsample (Zipformer, factor 2) on x [B 32, T 500, C 384]:
                    softmax(bias)-weighted sum of each pair of frames, written as icefall writes
                    it (pad with the last frame, reshape, multiply, sum); bf16 and f32
  linear-256-1024   F.linear(x, w, bias) with x [16000, 256], w [1024, 256], bias [1024] (the
                    LINEAR op; Zipformer feed-forward sizes), TF32 off; bf16 and f32; impl "torch"
  linear-1024-256   the same with x [16000, 1024], w [256, 1024], bias [256]
  gemm-qwen3-up     F.linear(x, w) without bias, bf16, x [16384, 1024], w [3072, 1024] (a Qwen3-0.6B
                    SFT step's gate/up projection); impl "torch"
  gemm-qwen3-down   the same with x [16384, 3072], w [1024, 3072]
  gemm-qwen3-lmhead the same with x [16384, 1024], w [151936, 1024] (the LM head)
  rmsnorm-qwen3-0.6b F.rms_norm(x, (d,), w, eps=1e-6) with x [16384, 1024], w [1024] (Qwen3-0.6B's
                    hidden size); bf16 and f32; impl "torch"
  rmsnorm-qwen3-1.7b the same with d 2048 (Qwen3-1.7B)

fwd runs under torch.no_grad(); fwdbwd is the forward with inputs requiring gradients and
torch.autograd.grad of every input for a random output gradient (no accumulation into .grad).
Per call: 3 warm-up calls, one call timed to size the samples, then the median over --iters samples
of back-to-back calls (as many as fill 2 ms, at most 1000) timed with CUDA events, divided by
the calls. --device cpu only checks this script where there is no GPU (perf_counter timing).
"""
import argparse
import json
import math
import sys
import time

WARMUP = 3
MIN_SAMPLE_S = 2e-3
MAX_REPS = 1000

ATTENTION = {
    "attn-qwen3-t2048": dict(b=8, t=2048, hq=16, hkv=8, d=128, causal=True),
    "attn-qwen3-t8192": dict(b=4, t=8192, hq=16, hkv=8, d=128, causal=True),
    "attn-zipformer": dict(b=32, t=512, hq=4, hkv=4, d=64, causal=False),
}
CONV = {
    "dwconv-k31": dict(b=32, c=384, t=500, k=31, stride=1),
    "dwconv-k31-s2": dict(b=32, c=384, t=500, k=31, stride=2),
}
DOWNSAMPLE = {"downsample-x2": dict(b=32, t=500, c=384, factor=2)}
LINEAR = {
    "linear-256-1024": dict(rows=32 * 500, k=256, n=1024),
    "linear-1024-256": dict(rows=32 * 500, k=1024, n=256),
}
GEMM = {
    "gemm-qwen3-up": dict(rows=8 * 2048, k=1024, n=3072),
    "gemm-qwen3-down": dict(rows=8 * 2048, k=3072, n=1024),
    "gemm-qwen3-lmhead": dict(rows=8 * 2048, k=1024, n=151936),
}
RMSNORM = {
    "rmsnorm-qwen3-0.6b": dict(rows=8 * 2048, d=1024),
    "rmsnorm-qwen3-1.7b": dict(rows=8 * 2048, d=2048),
}
CASES = [*ATTENTION, *CONV, *DOWNSAMPLE, *LINEAR, *GEMM, *RMSNORM]


def emit(**fields):
    print(json.dumps(fields), flush=True)


def one_line(e):
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg[:300]


def per_call_seconds(torch, fn, iters, device):
    if device == "cuda":
        def sample(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
    else:
        def sample(reps):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            return time.perf_counter() - t0
    for _ in range(WARMUP):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    first = sample(1)
    reps = max(1, min(MAX_REPS, math.ceil(MIN_SAMPLE_S / first))) if first > 0 else MAX_REPS
    times = sorted(sample(reps) / reps for _ in range(iters))
    return times[iters // 2]  # the C side's choice: the upper median for even counts


def fwd_and_fwdbwd(torch, forward, inputs, iters, device):
    """forward(*inputs) timed without gradients, then with torch.autograd.grad of every input."""
    with torch.no_grad():
        fwd = per_call_seconds(torch, lambda: forward(*inputs), iters, device)
    leaves = [x.detach().requires_grad_(True) for x in inputs]
    dy = torch.rand_like(forward(*leaves)) * 2 - 1

    def step():
        return torch.autograd.grad(forward(*leaves), leaves, dy)

    return fwd, per_call_seconds(torch, step, iters, device)


def bench_attention(torch, name, s, iters, device):
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.rand(s["b"], h, s["t"], s["d"], device=device, dtype=torch.bfloat16, generator=gen) * 2 - 1
               for h in (s["hq"], s["hkv"], s["hkv"]))
    for impl, backend_name in (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
        note = "enable_gqa=True" if s["hq"] != s["hkv"] else ""
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3

            with sdpa_kernel(getattr(SDPBackend, backend_name)):
                def sdpa(q_, k_, v_):
                    return F.scaled_dot_product_attention(q_, k_, v_, is_causal=s["causal"],
                                                          enable_gqa=q_.shape[1] != k_.shape[1])
                kk, vv = k, v
                try:
                    sdpa(q, kk, vv)
                except RuntimeError:
                    if s["hq"] == s["hkv"]:
                        raise
                    kk, vv = (x.repeat_interleave(s["hq"] // s["hkv"], dim=1) for x in (k, v))
                    note = "k, v repeated to the query heads before timing (this backend refused enable_gqa)"
                    sdpa(q, kk, vv)
                fwd, fwdbwd = fwd_and_fwdbwd(torch, sdpa, (q, kk, vv), iters, device)
            emit(case=name, impl=impl, dtype="bf16", fwd_s=fwd, fwdbwd_s=fwdbwd, note=note)
        except Exception as e:  # noqa: BLE001 - any failure is this backend's row, not the run's
            emit(case=name, impl=impl, dtype="bf16", error=f"SDPBackend.{backend_name}: {one_line(e)}")


def bench_conv(torch, name, s, iters, device):
    import torch.nn.functional as F

    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        try:
            gen = torch.Generator(device=device).manual_seed(2)
            x = torch.rand(s["b"], s["c"], s["t"], device=device, dtype=dtype, generator=gen) * 2 - 1
            w = torch.rand(s["c"], 1, s["k"], device=device, dtype=dtype, generator=gen) * 2 - 1
            bias = torch.rand(s["c"], device=device, dtype=dtype, generator=gen) * 2 - 1

            def conv(x_, w_, b_):
                return F.conv1d(x_, w_, b_, stride=s["stride"], padding=s["k"] // 2, groups=s["c"])

            fwd, fwdbwd = fwd_and_fwdbwd(torch, conv, (x, w, bias), iters, device)
            emit(case=name, impl="torch", dtype=dname, fwd_s=fwd, fwdbwd_s=fwdbwd, note="")
        except Exception as e:  # noqa: BLE001
            emit(case=name, impl="torch", dtype=dname, error=one_line(e))


def simple_downsample(torch, x, bias):
    """icefall zipformer.py SimpleDownsample.forward on [B, T, C] instead of [T, B, C]."""
    b, t, c = x.shape
    f = bias.shape[0]
    t_out = (t + f - 1) // f
    pad = t_out * f - t
    if pad > 0:
        x = torch.cat((x, x[:, t - 1:].expand(b, pad, c)), dim=1)
    weights = bias.softmax(dim=0).unsqueeze(-1)
    return (x.reshape(b, t_out, f, c) * weights).sum(dim=2)


def bench_downsample(torch, name, s, iters, device):
    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        try:
            gen = torch.Generator(device=device).manual_seed(3)
            x = torch.rand(s["b"], s["t"], s["c"], device=device, dtype=dtype, generator=gen) * 2 - 1
            bias = torch.rand(s["factor"], device=device, dtype=dtype, generator=gen) * 2 - 1
            fwd, fwdbwd = fwd_and_fwdbwd(torch, lambda x_, b_: simple_downsample(torch, x_, b_), (x, bias), iters,
                                         device)
            emit(case=name, impl="torch", dtype=dname, fwd_s=fwd, fwdbwd_s=fwdbwd, note="")
        except Exception as e:  # noqa: BLE001
            emit(case=name, impl="torch", dtype=dname, error=one_line(e))


def bench_linear(torch, name, s, iters, device):
    import torch.nn.functional as F

    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        try:
            gen = torch.Generator(device=device).manual_seed(4)
            x = torch.rand(s["rows"], s["k"], device=device, dtype=dtype, generator=gen) * 2 - 1
            w = torch.rand(s["n"], s["k"], device=device, dtype=dtype, generator=gen) * 2 - 1
            bias = torch.rand(s["n"], device=device, dtype=dtype, generator=gen) * 2 - 1
            fwd, fwdbwd = fwd_and_fwdbwd(torch, F.linear, (x, w, bias), iters, device)
            emit(case=name, impl="torch", dtype=dname, fwd_s=fwd, fwdbwd_s=fwdbwd, note="")
        except Exception as e:  # noqa: BLE001
            emit(case=name, impl="torch", dtype=dname, error=one_line(e))


def bench_gemm(torch, name, s, iters, device):
    import torch.nn.functional as F

    try:
        gen = torch.Generator(device=device).manual_seed(5)
        x = torch.rand(s["rows"], s["k"], device=device, dtype=torch.bfloat16, generator=gen) * 2 - 1
        w = torch.rand(s["n"], s["k"], device=device, dtype=torch.bfloat16, generator=gen) * 2 - 1
        fwd, fwdbwd = fwd_and_fwdbwd(torch, F.linear, (x, w), iters, device)
        emit(case=name, impl="torch", dtype="bf16", fwd_s=fwd, fwdbwd_s=fwdbwd, note="")
    except Exception as e:  # noqa: BLE001
        emit(case=name, impl="torch", dtype="bf16", error=one_line(e))


def bench_rmsnorm(torch, name, s, iters, device):
    import torch.nn.functional as F

    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        try:
            gen = torch.Generator(device=device).manual_seed(6)
            x = torch.rand(s["rows"], s["d"], device=device, dtype=dtype, generator=gen) * 2 - 1
            w = torch.rand(s["d"], device=device, dtype=dtype, generator=gen) * 2 - 1
            fwd, fwdbwd = fwd_and_fwdbwd(torch, lambda x_, w_: F.rms_norm(x_, (s["d"],), w_, eps=1e-6), (x, w),
                                         iters, device)
            emit(case=name, impl="torch", dtype=dname, fwd_s=fwd, fwdbwd_s=fwdbwd, note="")
        except Exception as e:  # noqa: BLE001
            emit(case=name, impl="torch", dtype=dname, error=one_line(e))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="all", choices=["all", *CASES])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    if args.iters < 1:
        ap.error("--iters must be >= 1")
    names = CASES if args.case == "all" else [args.case]
    try:
        import torch
    except ImportError as e:
        for n in names:
            emit(case=n, impl="all", dtype="all", error=f"cannot import torch: {e}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        for n in names:
            emit(case=n, impl="all", dtype="all", error=f"torch {torch.__version__} sees no CUDA GPU")
        return 0
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    emit(gpu=gpu, torch=torch.__version__)
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # f32 convolutions in f32, as luthier's
        torch.set_float32_matmul_precision("highest")  # f32 GEMMs in f32 (no TF32), as luthier's
    for n in names:
        if n in ATTENTION:
            bench_attention(torch, n, ATTENTION[n], args.iters, args.device)
        elif n in CONV:
            bench_conv(torch, n, CONV[n], args.iters, args.device)
        elif n in LINEAR:
            bench_linear(torch, n, LINEAR[n], args.iters, args.device)
        elif n in GEMM:
            bench_gemm(torch, n, GEMM[n], args.iters, args.device)
        elif n in RMSNORM:
            bench_rmsnorm(torch, n, RMSNORM[n], args.iters, args.device)
        else:
            bench_downsample(torch, n, DOWNSAMPLE[n], args.iters, args.device)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
