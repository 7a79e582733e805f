"""Tiny language models and a tokenizer built on the spot: no downloads."""

import numpy as np

SPECIAL = ["<s>", "</s>", "<pad>", "<unk>"]
WORDS = [f"w{i}" for i in range(60)]
VOCAB_SIZE = len(SPECIAL) + len(WORDS)


def tiny_tokenizer():
    """A word-level fast tokenizer: ids 0-3 special, then ``w0`` ... ``w59``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_llama(seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed=0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


def random_texts(n_texts=12, n_words=(5, 40), seed=0, words=WORDS):
    """Texts of random words, of random lengths."""
    rng = np.random.RandomState(seed)
    return [
        " ".join(rng.choice(words, size=rng.randint(*n_words)))
        for _ in range(n_texts)
    ]


def counting_texts(n_texts=16, length=(10, 30), seed=0, step=1):
    """Texts counting through the words: ``w5 w6 w7 ...`` (mod 60).

    Each next word follows from the last one, so a model trained on them
    predicts well, and its predictions depend on its residual stream.
    """
    rng = np.random.RandomState(seed)
    texts = []
    for _ in range(n_texts):
        start, n = rng.randint(len(WORDS)), rng.randint(*length)
        texts.append(" ".join(WORDS[(start + step * i) % len(WORDS)] for i in range(n)))
    return texts


def trained_llama(tokenizer, n_steps=30, seed=0):
    """A tiny Llama trained briefly on :func:`counting_texts` (a few seconds)."""
    import torch

    model = tiny_llama(seed)
    texts = counting_texts(16, (20, 31), seed=seed + 100)
    ids = [
        [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in texts
    ]
    width = max(map(len, ids))
    batch = torch.full((len(ids), width), tokenizer.pad_token_id)
    for row, seq in enumerate(ids):
        batch[row, : len(seq)] = torch.tensor(seq)
    labels = batch.masked_fill(batch == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(n_steps):
        optimizer.zero_grad()
        loss = model(input_ids=batch, labels=labels).loss
        loss.backward()
        optimizer.step()
    return model.eval()
