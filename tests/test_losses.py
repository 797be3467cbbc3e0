"""Property tests of every loss in issue 3, against hand-derived formulas."""
import math

import torch
from hypothesis import given, strategies as st

from nanoalign.dpo import dpo_loss, ipo_loss
from nanoalign.orpo import odds_ratio

lp = st.floats(-1e4, -1e-7, allow_nan=False)
small = st.floats(-20, -0.01)


@given(a=lp, b=lp)
def test_orpo_finite_with_finite_gradients_float32(a, b):
    aw = torch.tensor([a], requires_grad=True)
    al = torch.tensor([b], requires_grad=True)
    loss, z = odds_ratio(aw, al)
    g = torch.autograd.grad(loss.sum(), [aw, al])
    assert torch.isfinite(loss).all() and torch.isfinite(z).all()
    assert all(torch.isfinite(x).all() for x in g)


@given(a=small, b=small, d=st.floats(0.001, 1.0))
def test_orpo_decreases_as_chosen_logp_rises(a, b, d):
    hi = min(a + d, -1e-3)
    l0, _ = odds_ratio(torch.tensor([a]), torch.tensor([b]))
    l1, _ = odds_ratio(torch.tensor([hi]), torch.tensor([b]))
    assert l1.item() <= l0.item() + 1e-6


@given(a=lp, b=lp)
def test_swapping_chosen_and_rejected_negates_z(a, b):
    _, z1 = odds_ratio(torch.tensor([a]), torch.tensor([b]))
    _, z2 = odds_ratio(torch.tensor([b]), torch.tensor([a]))
    assert z1.item() == -z2.item()


@given(a=st.floats(-1e4, -1e-6), b=st.floats(-1e4, -1e-6))
def test_log_odds_matches_float64(a, b):
    def log_odds(x):  # float64, the textbook formula with the stable log(1 - e^x)
        return x - (math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x)))
    _, z = odds_ratio(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert abs(z.item() - (log_odds(a) - log_odds(b))) <= 1e-9 * max(1, abs(log_odds(a)), abs(log_odds(b)))


@given(pw=st.floats(-50, 0), pl=st.floats(-50, 0), rw=st.floats(-50, 0), rl=st.floats(-50, 0),
       beta=st.floats(0.01, 2.0))
def test_dpo_gradient_is_minus_beta_sigmoid(pw, pl, rw, rl, beta):
    x = torch.tensor([pw, pl], dtype=torch.float64, requires_grad=True)
    loss = dpo_loss(x[0], x[1], torch.tensor(rw, dtype=torch.float64), torch.tensor(rl, dtype=torch.float64), beta)
    g = torch.autograd.grad(loss, x)[0]
    h = (pw - rw) - (pl - rl)
    expect = -beta / (1 + math.exp(beta * h))     # -beta * sigma(-beta h)
    assert abs(g[0].item() - expect) < 1e-9 and abs(g[1].item() + expect) < 1e-9


@given(beta=st.floats(0.01, 2.0), shift=st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3),
       rw=st.floats(-10, 0), rl=st.floats(-10, 0), pl=st.floats(-10, 0))
def test_ipo_minimized_at_half_inverse_beta(beta, shift, rw, rl, pl):
    def at(h):  # choose pol_w so that the log-ratio difference equals h
        pw = h + (pl - rl) + rw
        return ipo_loss(torch.tensor(pw, dtype=torch.float64), torch.tensor(pl, dtype=torch.float64),
                        torch.tensor(rw, dtype=torch.float64), torch.tensor(rl, dtype=torch.float64), beta).item()
    h_star = 1 / (2 * beta)
    assert at(h_star) < 1e-12
    assert at(h_star + shift) > at(h_star)


@given(seed=st.integers(0, 1000))
def test_sft_loss_ignores_masked_tokens(seed):
    from nanoalign.common import batch_logps
    from tests.helpers import tiny
    m = tiny(seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 101, (2, 10), generator=g)
    mask = torch.zeros(2, 10)
    mask[:, 4:9] = 1                               # targets 4..8 are response tokens
    batch = {"ids": ids, "attn": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1), "mask": mask}
    a = batch_logps(m, batch)
    t2 = batch["targets"].clone()
    t2[:, :4] = torch.randint(3, 101, (2, 4), generator=g)   # change masked targets only
    b = batch_logps(m, {**batch, "targets": t2})
    assert torch.equal(a, b)
    t3 = batch["targets"].clone()
    t3[:, 5] = (t3[:, 5] + 1) % 101                           # change a response target
    assert not torch.equal(a, batch_logps(m, {**batch, "targets": t3}))
