"""Text generation with a KV cache: temperature, top-k, top-p, stop at end-of-text.

Used by training samples (``sample_prompts``, in the loop or in the sampler process) and by
``alpha sample``. Generation draws from its own seeded ``torch.Generator``, so sampling never
disturbs the training RNG (resume stays exact). When the context fills the block, the cache is
rebuilt from the most recent half block, so generation can run past the model's context length.
"""

from __future__ import annotations

import torch

from alpha.model.gpt import GPT, KVCache


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest nucleus of mass >= top_p."""
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (the crossing token stays)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 1.0,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Return the new token ids (without the prompt). ``temperature <= 0`` is greedy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    context = list(prompt_ids)[-block:] or [stop_id or 0]
    out: list[int] = []
    cache = KVCache(model.config.n_layer)
    logits = model(torch.tensor([context], device=device), cache=cache)[0, -1]
    try:
        for _ in range(max_new_tokens):
            if temperature <= 0:
                next_id = int(torch.argmax(logits))
            else:
                probs = torch.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            out.append(next_id)
            context.append(next_id)
            if next_id == stop_id:
                break
            if cache.length >= block:  # slide: re-prefill from the latest half block
                context = context[-(block // 2) :]
                cache = KVCache(model.config.n_layer)
                logits = model(torch.tensor([context], device=device), cache=cache)[0, -1]
            else:
                logits = model(torch.tensor([[next_id]], device=device), cache=cache)[0, -1]
    finally:
        model.train(was_training)
    return out


def sample_prompts(
    model: GPT, prompts: list[list[int]], max_new_tokens: int, *, seed: int, stop_id: int | None
) -> list[list[int]]:
    """A training sample round: one generator seeded with ``seed`` draws through the prompts in
    order, so a round is reproducible wherever it runs (the loop or the sampler process)."""
    gen = torch.Generator(device=next(model.parameters()).device)
    gen.manual_seed(seed)
    return [generate(model, ids, max_new_tokens, stop_id=stop_id, generator=gen) for ids in prompts]
