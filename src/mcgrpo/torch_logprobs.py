"""A plain-torch stand-in for TRL's Triton log-prob kernel, for machines without Triton.

TRL 1.15's GRPOTrainer scores completion tokens through `trl.kernels.ChunkedLogProbFunction`,
a Triton kernel, and has no fallback: without Triton (CPU CI, the offline demo on a laptop) it
fails with `'NoneType' object has no attribute 'apply'`. This computes the same quantities with
ordinary torch ops (autograd gives the backward). `mcgrpo.patches.install_torch_logprobs` installs it only where
TRL found no kernel, so GPU runs keep TRL's own fused path.
"""

import torch


class TorchChunkedLogProb:
    """Same call signature and outputs as trl.kernels.ChunkedLogProbFunction.apply."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy",)):
        logits = hidden.float() @ weight.float().t()  # [N, V]: fine at the sizes that run on a CPU
        if bias is not None:
            logits = logits + bias.float()
        logits = logits * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_p = torch.log_softmax(logits, dim=-1)
        logprobs = log_p.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
            is_top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1
