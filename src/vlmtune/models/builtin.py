"""The built-in model: a small, ordinary Hugging Face LLaVA model built from a config, for the offline demo and tests.

Vision: CLIP ViT (4 layers, dim 128) on 64x64 images; language: Llama (2 layers, dim 128); a 2-layer MLP projector.
About 1.6M parameters, trainable from scratch on a laptop CPU in minutes. The tokenizer is a byte-level BPE
trained here, with the `tokenizers` library (`data/tokenizer.py`), on the vocabulary of vlmtune's synthetic worlds
plus common words: any text encodes (unknown words fall back to bytes), and nothing is downloaded.

    loaded = build_builtin(BuiltinCfg())
    loaded.model.save_pretrained("m"); loaded.processor.save_pretrained("m")
    AutoModelForImageTextToText.from_pretrained("m"); AutoProcessor.from_pretrained("m")   # plain HF from here on
"""

from __future__ import annotations

from vlmtune.config import BuiltinCfg
from vlmtune.data.synthetic import WORLDS
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Loaded

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ...</s>"). The generation prompt ends at
# "ASSISTANT:" and the answer starts with a space, so prompt tokens are a prefix of prompt+answer tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(' ') %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ text }}\n"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is not string %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}{% endif %}"
    "{{ text }} "
    "{% else %}ASSISTANT: {{ text }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_COMMON_WORDS = (
    "a an the is are was were be this that these those what which who where when why how many much of in on at to "
    "from with without and or not no yes there here it its image picture photo person people man woman wearing "
    "wears colour color shape left right top bottom middle above below next number count describe caption write "
    "short one two three four five six seven eight nine ten zero some all any other answer question unanswerable "
    "chart table value title bar line pie year total percent more less than higher lower"
)


def _corpus() -> list[str]:
    lines = [_COMMON_WORDS] + ["USER: ASSISTANT:"] * 50  # the chat template's role words become single tokens
    for name in ("fashion", "shapes"):  # fixed: a new world (charts draws slowly) must not change the built-in model
        for sample, _ in WORLDS[name](300, seed=0, caption_fraction=0.3):
            lines.extend(part["text"] for m in sample.messages for part in m["content"] if part["type"] == "text")
    return lines


def build_tokenizer(vocab_size: int = 640):
    """The built-in model's tokenizer, trained in-process on vlmtune's synthetic worlds, wrapped for transformers."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_corpus(), [PAD, BOS, EOS, IMAGE], vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE}, model_max_length=2048,
    )


def build_processor(cfg: BuiltinCfg, tokenizer=None):
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_tokenizer(cfg.vocab_size),
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",  # drop CLS: (size/patch)^2 image tokens
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: BuiltinCfg, tokenizer):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_dim,
        intermediate_size=4 * cfg.vision_dim, num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
        projection_dim=cfg.vision_dim,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=4 * cfg.text_dim,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.to(torch.float32)


def build_builtin(cfg: BuiltinCfg | None = None, seed: int = 0) -> Loaded:
    """The built-in model with random weights (seeded) and its processor."""
    import torch

    cfg = cfg or BuiltinCfg()
    processor = build_processor(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg, processor.tokenizer)
    return Loaded(model=model, processor=processor, family="llava")
