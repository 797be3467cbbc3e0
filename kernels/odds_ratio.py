"""
The ORPO odds-ratio term (ORPO, arXiv:2403.07691; docs/methods.md#orpo), forward and backward.

    log_odds(a) = a - log(1 - exp(a))            a = logp_mean of a response, a < 0
    z           = log_odds(a_w) - log_odds(a_l)  the "log odds ratio"
    loss        = -log sigmoid(z) = softplus(-z)

The danger is log(1 - exp(a)) near a = 0 (an empty or fully certain response): 1 - exp(a) cancels,
and at a = 0 it is log(0). We clamp a to at most -EPS (so a = 0 gives a large but finite log-odds
and zero gradient through the clamp), and compute log(1 - exp(a)) in float64 inside the kernel:
with 53 bits, 1 - exp(-1e-7) keeps 9 correct digits, so no expm1/log1p case split is needed. The
inputs are a batch-sized vector, so float64 costs nothing here.

d z / d a_w = 1 / (1 - exp(a_w)),   d z / d a_l = -1 / (1 - exp(a_l)),   d loss / d z = -sigmoid(-z).

The forward kernel writes those two derivatives beside z, so backward is two multiplications.
Outputs (loss, z) are both differentiable: the conjoined method uses z on its own.
"""
import torch

from kernels.seq_logprob import HAS_TRITON, choose_backend

EPS = 1e-7

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _or_fwd_kernel(
        AW, AL,       # (B,) mean log-probs of the chosen / rejected responses (any float dtype)
        LOSS, Z,      # (B,) float32 out: softplus(-z), z
        DW, DLL,      # (B,) float32 out: d z / d a_w, d z / d a_l (0 where the clamp is active)
        B, EPS_C: tl.constexpr, BLOCK: tl.constexpr,
    ):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        msk = i < B
        aw = tl.load(AW + i, mask=msk, other=-1.0).to(tl.float64)
        al = tl.load(AL + i, mask=msk, other=-1.0).to(tl.float64)
        # the clamp passes a NaN on (tl.minimum alone drops it): a NaN log-prob is a bug upstream,
        # and must reach the loss, where the training loop's finite check stops the step
        cw = tl.minimum(aw, -EPS_C, propagate_nan=tl.PropagateNan.ALL)
        cl = tl.minimum(al, -EPS_C, propagate_nan=tl.PropagateNan.ALL)
        one_w, one_l = 1.0 - tl.exp(cw), 1.0 - tl.exp(cl)          # 1 - exp(a), in float64
        z = (cw - tl.log(one_w)) - (cl - tl.log(one_l))
        # softplus(-z) = max(-z, 0) + log(1 + exp(-|z|)), stable for large |z|
        loss = tl.maximum(-z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
        tl.store(LOSS + i, loss.to(tl.float32), mask=msk)
        tl.store(Z + i, z.to(tl.float32), mask=msk)
        tl.store(DW + i, tl.where(aw > -EPS_C, 0.0, 1.0 / one_w).to(tl.float32), mask=msk)   # NaN: NaN
        tl.store(DLL + i, tl.where(al > -EPS_C, 0.0, -1.0 / one_l).to(tl.float32), mask=msk)


def log1mexp(a):
    """log(1 - exp(a)) for a < 0, stable (docs/methods.md#orpo): the branch choice of Maechler (2012)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def odds_ratio_reference(logp_w, logp_l):
    """Plain-torch (loss, z), differentiated by autograd. The clamp keeps both where-branches finite."""
    up = lambda a: (a if a.dtype == torch.float64 else a.float()).clamp(max=-EPS)  # noqa: E731
    aw, al = up(logp_w), up(logp_l)
    z = (aw - log1mexp(aw)) - (al - log1mexp(al))
    return torch.nn.functional.softplus(-z), z


class OddsRatio(torch.autograd.Function):  # pragma: no mutate block (Triton path)
    @staticmethod
    def forward(ctx, logp_w, logp_l):
        B = logp_w.numel()
        out = torch.empty(4, B, dtype=torch.float32, device=logp_w.device)
        loss, z, dw, dl = out
        BLOCK = 128
        _or_fwd_kernel[(triton.cdiv(B, BLOCK),)](logp_w.contiguous(), logp_l.contiguous(), loss, z,
                                                 dw, dl, B, EPS_C=EPS, BLOCK=BLOCK)
        ctx.save_for_backward(z, dw, dl)
        ctx.dtypes, ctx.shape = (logp_w.dtype, logp_l.dtype), logp_w.shape
        return loss.view(logp_w.shape), z.view(logp_w.shape)      # (B,) computed, the input's shape out

    @staticmethod
    def backward(ctx, g_loss, g_z):
        z, dw, dl = ctx.saved_tensors
        g = torch.zeros_like(z)
        if g_loss is not None:
            g = g - g_loss.reshape(-1) * torch.sigmoid(-z)   # d softplus(-z) / d z = -sigmoid(-z)
        if g_z is not None:
            g = g + g_z.reshape(-1)
        return (g * dw).to(ctx.dtypes[0]).view(ctx.shape), (g * dl).to(ctx.dtypes[1]).view(ctx.shape)


def odds_ratio_loss(logp_w, logp_l, backend=None):
    """(loss, z), each (B,): ORPO's per-example -log sigmoid(z) and the log odds ratio z. float32, except
    that the torch route keeps float64 inputs in float64."""
    if choose_backend(logp_w, backend) == "triton":
        return OddsRatio.apply(logp_w, logp_l)
    return odds_ratio_reference(logp_w, logp_l)
