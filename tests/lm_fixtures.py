"""A tiny Llama checkpoint, its tokenizer, chat data and lm-eval tasks, all written locally
(nothing downloaded): the inputs of the lm_retrofit family's tests.

The tokenizer is byte-level with no merges (one token per byte, plus the chat's special tokens),
so decoding a token span gives back exactly the text it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "2+3 = 5."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red, then green."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}],
    [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "one two three"}],
]
MC_DOCS = [
    {"question": "Sky colour?", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "2+2=", "choices": ["3", "4"], "answer": 1},
    {"question": "Opposite of up:", "choices": ["down", "left", "over", "red"], "answer": 0},
]
GEN_DOCS = [
    {"question": "Echo ab:", "answer": "ab"},
    {"question": "Say yes:", "answer": "yes"},
    {"question": "1 2 3", "answer": "4"},
]


def tokenizer():
    """A PreTrainedTokenizerFast: byte-level, no merges, with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({char: len(SPECIALS) + i for i, char in enumerate(alphabet)})
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|bos|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", chat_template=CHAT_TEMPLATE)


def write_llama(path: Path, n_layers: int = 4, seed: int = 0, model_type: str = "llama") -> Path:
    """A random tiny Llama (or, for error tests, a GPT-2) with its tokenizer, via save_pretrained."""
    import torch
    import transformers

    tok = tokenizer()
    torch.manual_seed(seed)
    if model_type == "llama":
        config = transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)
        model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # larger weights than the init's, so that different models differ clearly
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def write_chats(path: Path, chats=CHATS) -> Path:
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    return path


def write_tasks(directory: Path, data_dir: Path | None = None) -> Path:
    """Two lm-eval tasks with local data: vld_tiny_mc (multiple choice), vld_tiny_gen (generation).
    `data_dir`: where the task YAMLs say the data is (default: `directory`, absolute)."""
    directory.mkdir(parents=True, exist_ok=True)
    data_dir = directory.resolve() if data_dir is None else data_dir
    (directory / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (directory / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in GEN_DOCS))
    (directory / "vld_tiny_mc.yaml").write_text(
        "task: vld_tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_dir / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n")
    (directory / "vld_tiny_gen.yaml").write_text(
        "task: vld_tiny_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_dir / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['<|end|>']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return directory
