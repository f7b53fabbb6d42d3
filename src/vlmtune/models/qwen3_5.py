"""Qwen3.5 family (`Qwen3_5ForConditionalGeneration`): natively multimodal; Qwen3-VL's ViT (patch 16, no DeepStack)
-> 2x2 patch merger -> a hybrid decoder: 3 of every 4 layers are linear attention (Gated DeltaNet, a gated
recurrent state with a short causal convolution), every 4th full attention with an output gate, interleaved
M-RoPE on a quarter of each head (`partial_rotary_factor`).

Checkpoints: Qwen/Qwen3.5-0.8B, Qwen/Qwen3.5-2B, Qwen/Qwen3.5-4B, Qwen/Qwen3.5-9B, Qwen/Qwen3.5-27B (and
fine-tunes; the MoE sizes are `qwen3_5_moe`, not covered).

Prompt format: the checkpoints' ChatML chat template (`CHAT_TEMPLATE`, the small sizes' one with thinking off by
default), no default system turn. The turn after the last user turn carries an empty thinking block, and so does
the generation prompt:

    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What colour is the top?<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\nred<|im_end|>\\n

The generation prompt is `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`; the trained tokens are the answer and
`<|im_end|>` (the empty thinking block is prompt, not answer). Processing is Qwen3-VL's (qwen3_vl.py, qwen2_vl.py):
the same image-only processor saved as `Qwen3VLProcessor`, the same `encode` and `image_tokens`.

Traps handled here:
- Multi-turn samples: the template drops the thinking block of every assistant turn before the last user turn, so
  a conversation's earlier answers do not render as they did when they were the last one. `assistant_spans` sees
  that the turns are not prefixes and refuses the sample, naming it (training on such a turn would put the prompt
  tokens `<think>..</think>` in the answer or the answer in the prompt); single-turn samples are exact.
- Padding and the linear-attention layers: their recurrence and convolution are causal, so right padding (training)
  cannot reach a sample's tokens, and the layers zero the hidden states of padded positions
  (`apply_mask_to_padding_states`), which keeps the recurrent state at zero through left padding (generation).
  tests/models/test_qwen3.py checks a sample's loss and logits are the same alone and padded in a batch.
- Packing stays off: besides the M-RoPE positions (`get_rope_index` has Qwen2-VL's signature), the linear
  attention's recurrence and convolution would run across the samples of a packed row: transformers hands the
  row's `cu_seq_lens_q` only to the flash-linear-attention kernels, and the torch fallback (`**kwargs`) ignores it.
- The linear attention runs transformers' torch fallback without the `flash-linear-attention` / `causal-conv1d`
  kernels (CPU, or a GPU without them): exact, slower.
- Qwen3.5-0.8B ships no generation_config.json and its config's eos is `<|endoftext|>`: generation would not stop
  at `<|im_end|>`. `load` sets the generation config's eos to [`<|im_end|>`, `<|endoftext|>`] when `<|im_end|>` is
  missing (the tokenizer's eos, which is also what the trained end token is).
- LoRA targets the full-attention and MLP linears and the linear attention's input/output projections
  (`in_proj_qkv`, `in_proj_z`, `out_proj`); the tiny per-head gate projections (`in_proj_a`, `in_proj_b`) and the
  convolution stay frozen. The ViT's MLP is `linear_fc1/2` and its attention `qkv`/`proj`: the regex keeps them out.
- The checkpoints' config has `mtp_*` fields (a multi-token-prediction head) that transformers does not build: the
  model has no MTP parameters, and a saved fine-tune has none either.
"""

from __future__ import annotations

from vlmtune.models import qwen2_vl, qwen3_vl
from vlmtune.models.family import Loaded, ModelFamily

LANGUAGE_LINEARS = qwen2_vl.LANGUAGE_LINEARS + ("in_proj_qkv", "in_proj_z", "out_proj")

# The chat template of Qwen/Qwen3.5-0.8B (and -2B; thinking off unless enable_thinking), lines stripped and joined
# (the same rendering; tests/real/test_real_processors.py compares it with the checkpoint's).
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}{%- macro render_content(c"
    "ontent, do_vision_count, is_system_content=false) %}{%- if content is string %}{{- content }}{%- elif content is"
    " iterable and content is not mapping %}{%- for item in content %}{%- if 'image' in item or 'image_url' in item o"
    "r item.type == 'image' %}{%- if is_system_content %}{{- raise_exception('System message cannot contain images.')"
    " }}{%- endif %}{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}{%- if a"
    "dd_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}{{- '<|vision_start|><|image_pad|><|visio"
    "n_end|>' }}{%- elif 'video' in item or item.type == 'video' %}{%- if is_system_content %}{{- raise_exception('Sy"
    "stem message cannot contain videos.') }}{%- endif %}{%- if do_vision_count %}{%- set video_count.value = video_c"
    "ount.value + 1 %}{%- endif %}{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}{{- '<"
    "|vision_start|><|video_pad|><|vision_end|>' }}{%- elif 'text' in item %}{{- item.text }}{%- else %}{{- raise_exc"
    "eption('Unexpected item type in content.') }}{%- endif %}{%- endfor %}{%- elif content is none or content is und"
    "efined %}{{- '' }}{%- else %}{{- raise_exception('Unexpected content type.') }}{%- endif %}{%- endmacro %}{%- if"
    " not messages %}{{- raise_exception('No messages provided.') }}{%- endif %}{%- if tools and tools is iterable an"
    "d tools is not mapping %}{{- '<|im_start|>system\\n' }}{{- \"# Tools\\n\\nYou have access to the following funct"
    "ions:\\n\\n<tools>\" }}{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}{{- \"\\n</tools>"
    "\" }}{{- '\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n<tool_c"
    "all>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n<parameter="
    "example_parameter_2>\\nThis is the value for the second parameter\\nthat can span\\nmultiple lines\\n</parameter"
    ">\\n</function>\\n</tool_call>\\n\\n<IMPORTANT>\\nReminder:\\n- Function calls MUST follow the specified format:"
    " an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\\n- Required pa"
    "rameters MUST be specified\\n- You may provide optional reasoning for your function call in natural language BEF"
    "ORE the function call, but NOT after\\n- If there is no function call available, answer the question like normal"
    " with your current knowledge and do not tell the user about function calls\\n</IMPORTANT>' }}{%- if messages[0]."
    "role == 'system' %}{%- set content = render_content(messages[0].content, false, true)|trim %}{%- if content %}{{"
    "- '\\n\\n' + content }}{%- endif %}{%- endif %}{{- '<|im_end|>\\n' }}{%- else %}{%- if messages[0].role == 'syst"
    "em' %}{%- set content = render_content(messages[0].content, false, true)|trim %}{{- '<|im_start|>system\\n' + co"
    "ntent + '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- set ns = namespace(multi_step_tool=true, last_query_index="
    "messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %"
    "}{%- if ns.multi_step_tool and message.role == \"user\" %}{%- set content = render_content(message.content, fals"
    "e)|trim %}{%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}{%- set n"
    "s.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endif %}{%- endfor %}{%- if ns"
    ".multi_step_tool %}{{- raise_exception('No user query found in messages.') }}{%- endif %}{%- for message in mess"
    "ages %}{%- set content = render_content(message.content, true)|trim %}{%- if message.role == \"system\" %}{%- if"
    " not loop.first %}{{- raise_exception('System message must be at the beginning.') }}{%- endif %}{%- elif message"
    ".role == \"user\" %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}{%- elif messag"
    "e.role == \"assistant\" %}{%- set reasoning_content = '' %}{%- if message.reasoning_content is string %}{%- set "
    "reasoning_content = message.reasoning_content %}{%- else %}{%- if '</think>' in content %}{%- set reasoning_cont"
    "ent = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}{%- set content = content."
    "split('</think>')[-1].lstrip('\\n') %}{%- endif %}{%- endif %}{%- set reasoning_content = reasoning_content|trim"
    " %}{%- if loop.index0 > ns.last_query_index %}{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_co"
    "ntent + '\\n</think>\\n\\n' + content }}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- end"
    "if %}{%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}{%- fo"
    "r tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.functio"
    "n %}{%- endif %}{%- if loop.first %}{%- if content|trim %}{{- '\\n\\n<tool_call>\\n<function=' + tool_call.name "
    "+ '>\\n' }}{%- else %}{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{%- endif %}{%- else %}{{- '\\n"
    "<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{%- endif %}{%- if tool_call.arguments is defined %}{%- fo"
    "r args_name, args_value in tool_call.arguments|items %}{{- '<parameter=' + args_name + '>\\n' }}{%- set args_val"
    "ue = args_value | tojson | safe if args_value is mapping or (args_value is sequence and args_value is not string"
    ") else args_value | string %}{{- args_value }}{{- '\\n</parameter>\\n' }}{%- endfor %}{%- endif %}{{- '</functio"
    "n>\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- elif message.role == \"tool\" %}{%- if l"
    "oop.previtem and loop.previtem.role != \"tool\" %}{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\"
    "n' }}{{- content }}{{- '\\n</tool_response>' }}{%- if not loop.last and loop.nextitem.role != \"tool\" %}{{- '<|"
    "im_end|>\\n' }}{%- elif loop.last %}{{- '<|im_end|>\\n' }}{%- endif %}{%- else %}{{- raise_exception('Unexpected"
    " message role.') }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- "
    "if enable_thinking is defined and enable_thinking is true %}{{- '<think>\\n' }}{%- else %}{{- '<think>\\n\\n</th"
    "ink>\\n\\n' }}{%- endif %}{%- endif %}"
)


def load(cfg) -> Loaded:
    loaded = qwen3_vl.load(cfg, "qwen3_5", FREEZE_GROUPS)
    gen, tok = loaded.model.generation_config, loaded.processor.tokenizer
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    end = tok.convert_tokens_to_ids(qwen2_vl.END)
    if end not in eos:
        gen.eos_token_id = [end] + [e for e in eos if e is not None]
        gen.pad_token_id = tok.pad_token_id if gen.pad_token_id is None else gen.pad_token_id
    return loaded


def build_tokenizer():
    """qwen2_vl's tiny tokenizer with `<think>` and `</think>` added as (non-special) tokens, as in the checkpoints."""
    tok = qwen2_vl.build_tokenizer()
    tok.add_tokens(["<think>", "</think>"])
    return tok


def tiny() -> Loaded:
    """A random Qwen3.5: ViT 2 layers dim 32 (patch 16), decoder layer 0 linear attention (2 key heads, 4 value
    heads of 8), layer 1 full attention (4 heads of 32, rotary on a quarter: M-RoPE sections sum to 4)."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    processor = qwen3_vl.build_processor(build_tokenizer(), CHAT_TEMPLATE)
    text = qwen3_vl.text_config(processor.tokenizer, layer_types=["linear_attention", "full_attention"],
                                linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8,
                                linear_num_key_heads=2, linear_num_value_heads=4)
    text.update(head_dim=32, rope_parameters={**text["rope_parameters"], "partial_rotary_factor": 0.25})
    return qwen3_vl.build_tiny(Qwen3_5Config, Qwen3_5ForConditionalGeneration, processor, text,
                               qwen3_vl.vision_config(), "qwen3_5")


FREEZE_GROUPS = {
    "vision": ("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
    "projector": ("model.visual.merger.",),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="qwen3_5",
    description="Qwen3.5 (Qwen/Qwen3.5-*): ViT -> patch merger -> hybrid Gated DeltaNet + attention decoder, M-RoPE",
    load=load,
    encode=qwen2_vl.encode,
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=qwen2_vl.image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("merger",),
    vision_cache=True,  # takes mm_encoder_outputs (the merged features; no DeepStack): the frozen-vision cache applies
    processor_loader=qwen3_vl.load_processor,
    language_model="model.language_model",
    vision_tower="model.visual",
)
