"""Fused kernels: sequence log-probs from hidden states and the LM head, and the ORPO odds ratio."""
from kernels.odds_ratio import odds_ratio_loss  # noqa: F401
from kernels.seq_logprob import sequence_logprob  # noqa: F401
