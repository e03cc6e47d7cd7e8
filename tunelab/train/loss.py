"""The training loss: cross-entropy on trained (assistant) tokens only, without materialising the logits.

Two savings over the usual `model(input_ids, labels=labels).loss`:

1. Logits only where there is loss. The LM head of a small modern model is most of its compute (Gemma 3
   270M: a 262,144 × 640 head against a 100M-parameter body), and most tokens of a chat example are
   prompt. We run the decoder body, keep the hidden states whose next token is trained, and multiply only
   those by the head.
2. The head, softmax and their gradient in one pass, a chunk of tokens at a time. For each chunk we
   compute the logits, the loss and — because the loss is the end of the graph — the gradient with
   respect to the hidden states straight away (softmax − one-hot, times the head), then drop the chunk's
   logits. Peak memory for the head is one chunk (about 64 MB) instead of tokens × vocabulary floats in
   several copies, and the backward pass has nothing left to do but scale the stored gradient. This is
   the idea of Liger Kernel's fused linear cross-entropy and Unsloth's chunked loss, in plain PyTorch so
   it runs on any device.
"""

from __future__ import annotations

import torch

from tunelab.conversation.render import IGNORE_INDEX

# Logits held at a time: 256 MB (256 tokens of a 262,144-word vocabulary). Larger chunks make the two head
# multiplications faster (86 → 130 GFLOP/s from 64 to 512 tokens on a two-core CPU), smaller ones save memory.
CHUNK_BYTES = 256 * 2**20
# exp() of fp32 logits is safe without subtracting the row maximum while every maximum lies in this range:
# no overflow even summed over a million-word vocabulary (e^60 × 2^20 < 3.4e38), no underflow of the sum
# (it is at least e^max > e^-60). Language-model logits almost always do; other chunks take the shifted path.
SAFE_LOGIT = 60.0


# On a CPU, a block of the vocabulary at a time: logits blocks of this size stay in the last-level cache, so
# exponentiating and summing them costs no trip to memory. 7 MB measured fastest between 4 and 12 MB on a
# two-core CPU with a 32 MB cache (wider blocks also make the multiplications more efficient).
CACHE_BLOCK_BYTES = 7 * 2**20
# ... and the block's rows of the head at most this size, so the second multiplication (the gradient's) reads
# them from cache rather than from memory again: with few trained tokens a step's logits block would
# otherwise span 70,000 rows (180 MB in fp32). 5 MB (2,048 fp32 or 4,096 bf16 rows of Gemma 3's head) made
# the pass 5–15% faster at 26–120 tokens in fp32, AVX2 and AVX-512 alike, and up to 7% in bf16 (two-core
# EPYC, one thread, medians of five); at 250 tokens it is within noise.
HEAD_BLOCK_BYTES = 5 * 2**20


def _vocabulary_blocked(hidden, weight, targets):
    """(each token's loss, correct count, gradient for `hidden`) in one pass over vocabulary blocks, or None.

    Without subtracting row maxima (see SAFE_LOGIT), softmax − one-hot times the head needs only two sums
    that add up block by block: S = Σ exp(z) and N = Σ exp(z)·W, giving loss = log S − z_target and
    gradient = N / S − W_target. Each block of logits is made, used and dropped while in cache. Returns
    None when some logit leaves the safe range; the caller then takes the shifted path.

    A prediction counts as correct when the target's logit is the row's maximum. Taking maxima without
    their positions (amax) costs a fifth of max-with-indices; the target logits are picked out of the
    blocks they fall in, so they are the very values the maxima were taken over.
    """
    hidden = hidden.to(weight.dtype)
    tokens, vocabulary = hidden.shape[0], weight.shape[0]
    # A whole number of 128-row tiles: a ragged block width slows the logits multiplication by a quarter.
    row_bytes = weight.shape[1] * weight.element_size()
    block = max(128, min(CACHE_BLOCK_BYTES // (4 * max(tokens, 1)), HEAD_BLOCK_BYTES // row_bytes) // 128 * 128)
    sums = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
    weighted = torch.zeros(tokens, weight.shape[1], dtype=torch.float32, device=hidden.device)
    best = torch.full((tokens,), -float("inf"), device=hidden.device)
    wanted_logits = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
    # Tokens grouped by the block their target falls in: by_target[bounds[k]:bounds[k + 1]] for block k.
    by_target = torch.argsort(targets)
    sorted_targets = targets[by_target]
    bounds = torch.searchsorted(sorted_targets, torch.arange(0, vocabulary + block, block,
                                                             device=targets.device)).tolist()
    for index, start in enumerate(range(0, vocabulary, block)):
        rows = weight[start:start + block]
        logits = (hidden @ rows.T).float()
        maxima = logits.amax(dim=-1)
        if bool((maxima >= SAFE_LOGIT).any()):
            return None
        torch.maximum(best, maxima, out=best)
        low, high = bounds[index], bounds[index + 1]
        wanted, columns = by_target[low:high], sorted_targets[low:high] - start
        if high > low:
            wanted_logits[wanted] = logits[wanted, columns]
        exponentials = logits.exp_()
        sums += exponentials.sum(dim=-1)
        if high > low:  # the targets' own columns are left out of the product (see _gradient)
            exponentials[wanted, columns] = 0
        if weight.dtype == torch.float32:
            weighted.addmm_(exponentials, rows)
        else:  # the 16-bit product (matrix units) added into the fp32 sum: no fp32 copy of the head block
            weighted += exponentials.to(weight.dtype) @ rows
    if bool((best <= -SAFE_LOGIT).any()):
        return None
    token_losses = sums.log() - wanted_logits
    correct = (wanted_logits >= best).sum()
    return token_losses, correct, _gradient(weighted, sums, wanted_logits.exp(), weight[targets])


def _gradient(others_weighted, sums, wanted_exponentials, wanted_rows):
    """softmax @ W − W_target, from Σ_{j≠target} exp(z_j)·W_j (the product, made without the target's column)
    and the target's exp(z) and row: the target's part, (p_target − 1)·W_target, is added in fp32.

    Subtracting the one-hot after a 16-bit product would lose the gradient exactly where the model is
    confident: at p_target = 0.9997 the product is W_target to within bf16's rounding (0.4%), which is larger
    than the gradient itself (0.03% of it), so the difference would be mostly rounding error. Left out of the
    product, the target's large term never meets 16 bits; the other terms are all small.
    """
    return others_weighted / sums[:, None] + ((wanted_exponentials / sums) - 1)[:, None] * wanted_rows.float()


class _LinearCrossEntropy(torch.autograd.Function):
    """Each token's cross-entropy of `hidden @ weight.T` against `targets`, gradients computed in the forward.

    The gradients stored are those of the tokens' sum; the backward scales each token's row of the hidden
    states' gradient by what flows back to that token's loss, so a loss that weighs tokens differently (a
    preference loss over sequences' log-probabilities) gets its exact gradient. The head's gradient is a sum
    over tokens made in the forward, so it can only be scaled as a whole: a head that trains takes the same
    weight for every token.

    Per chunk, the logits buffer is swept as few times as possible: written by the multiplication, read
    once for the row maxima (which are also the argmax, for accuracy), exponentiated in place, summed, and
    read by the gradient multiplication. The softmax division is applied to the small product afterwards:
    (exp(z) / s) @ W = (exp(z) @ W) / s.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, compute_dtype):
        needs_hidden_grad, needs_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if needs_hidden_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight_grad else None
        token_losses = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        chunk_size = max(16, CHUNK_BYTES // (4 * weight.shape[0]))
        # The multiplications run in the compute dtype (an fp32 master head is cast once per call); softmax
        # sums, the loss and the gradients accumulate in fp32.
        head = weight.to(compute_dtype)
        # fp16 overflows at 65,504, far below e^60: its exponentials are always taken after the row shift,
        # which the blocked pass does not do.
        always_shift = head.dtype == torch.float16
        blocked = None
        with torch.autocast(hidden.device.type, enabled=False):
            if hidden.device.type == "cpu" and softcap is None and not needs_weight_grad and not always_shift:
                blocked = _vocabulary_blocked(hidden, head, targets)
            if blocked is not None:
                token_losses, correct, grad_hidden = blocked
                if not needs_hidden_grad:
                    grad_hidden = None
            # The token-chunk path, for everything the blocked pass does not cover (or refused).
            chunk_starts = range(0, hidden.shape[0], chunk_size) if blocked is None else ()
            for start in chunk_starts:
                chunk = hidden[start:start + chunk_size].to(head.dtype)
                wanted = targets[start:start + chunk_size]
                rows = torch.arange(len(wanted), device=hidden.device)
                logits = (chunk @ head.T).float()
                if softcap:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                wanted_logits = logits[rows, wanted]
                maxima, predicted = logits.max(dim=-1)
                correct += (predicted == wanted).sum()
                shift = None
                if always_shift or not bool(((maxima > -SAFE_LOGIT) & (maxima < SAFE_LOGIT)).all()):
                    shift = maxima[:, None]
                    logits.sub_(shift)
                exponentials = logits.exp_()
                sums = exponentials.sum(dim=-1)
                log_normaliser = sums.log() + (maxima if shift is not None else 0)
                token_losses[start:start + chunk_size] = log_normaliser - wanted_logits
                if grad_hidden is None and grad_weight is None:
                    continue
                # d(loss)/d(logits) = softmax − one-hot.
                if softcap:
                    softmax = exponentials.div_(sums[:, None])
                    softmax[rows, wanted] -= 1
                    grad_logits = softmax.mul_(1 - capped * capped).to(head.dtype)
                    if grad_hidden is not None:
                        grad_hidden[start:start + chunk_size] = (grad_logits @ head).float()
                    if grad_weight is not None:
                        grad_weight += (grad_logits.T @ chunk).float()
                    continue
                # The target's column is left out of the hidden states' product (see _gradient) and put back,
                # as p_target − 1 formed in fp32, for the head's.
                wanted_exponentials = exponentials[rows, wanted].clone()
                exponentials[rows, wanted] = 0
                if grad_hidden is not None:
                    grad_hidden[start:start + chunk_size] = _gradient(
                        (exponentials.to(head.dtype) @ head).float(), sums, wanted_exponentials, head[wanted])
                if grad_weight is not None:
                    softmax = exponentials.div_(sums[:, None])
                    softmax[rows, wanted] = wanted_exponentials / sums - 1
                    grad_weight += (softmax.to(head.dtype).T @ chunk).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(correct)
        return token_losses, correct

    @staticmethod
    def backward(ctx, grad_tokens, _grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_tokens[:, None]).to(ctx.hidden_dtype)
        if grad_weight is not None:
            if len(grad_tokens) and not bool((grad_tokens == grad_tokens[0]).all()):
                raise NotImplementedError("a loss that weighs tokens differently cannot train the LM head here: its "
                                          "gradient is summed over tokens in the forward (train an adapter instead)")
            scale = grad_tokens[0] if len(grad_tokens) else 0.0
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden, weight, targets, softcap: float | None = None, compute_dtype=None):
    """(summed loss, number of correct argmax predictions) of the LM head over `hidden` rows.

    `compute_dtype`: what the head multiplications run in (default: the weight's own dtype); the loss and
    the gradients are accumulated in fp32 and returned in the inputs' dtypes.
    """
    token_losses, correct = token_cross_entropy(hidden, weight, targets, softcap, compute_dtype)
    return token_losses.sum(), correct


def token_cross_entropy(hidden, weight, targets, softcap: float | None = None, compute_dtype=None):
    """(each row's loss, number of correct argmax predictions): as `linear_cross_entropy`, the losses kept apart
    so that a loss over sequences (sums of these) gets its gradient through them."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, softcap, compute_dtype or weight.dtype)


class TrainedTokenLoss(torch.nn.Module):
    """Wraps a causal LM so that forward() returns the loss sum, correct count and trained-token count.

    A module rather than a function so that DistributedDataParallel and FSDP, which hook a module's
    forward, can wrap the whole computation.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        causal_lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # Batches are right-padded, so under causal attention no real token can see a pad: the padding mask
        # changes only the outputs at pad positions, which carry no loss. Leaving it out lets attention
        # skip the masked half of each score matrix instead of computing and then masking it.
        right_padded = bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=None if right_padded else attention_mask,
                                         use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        trained = targets != IGNORE_INDEX
        head = causal_lm.get_output_embeddings()
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        device = hidden.device.type
        # Under autocast the head multiplies in the autocast dtype, as every other layer does.
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        loss_sum, correct = linear_cross_entropy(hidden[:, :-1][trained], head.weight, targets[trained], softcap,
                                                 compute_dtype)
        return loss_sum, correct, int(trained.sum())
