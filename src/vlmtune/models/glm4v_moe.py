"""GLM-4.5V family (`Glm4vMoeForConditionalGeneration`): GLM-4.1V (glm4v.py) with a mixture-of-experts GLM-4.5-Air
decoder: after `first_k_dense_replace` dense layers, each layer's MLP is a sigmoid router (grouped top-k, a learned
score bias) over many small SwiGLU experts plus a shared expert.

Checkpoints: zai-org/GLM-4.5V (106B parameters, 12B active; and fine-tunes); zai-org/GLM-4.6V, the same
architecture (its own template and `Glm46VProcessor` files: glm46v.py says what differs; its images are processed
the same, and a vlmtune checkpoint of it saves `Glm4vProcessor`). zai-org/GLM-4.5V-FP8 is the same model
in FP8 (fine-grained block scales): it loads for inference where transformers' FP8 path runs, but its weights are
not trainable; train on the bf16 checkpoint.

Processing is GLM-4.1V's: the same processor (`glm4v.ImageOnlyProcessor`, saved as `Glm4vProcessor`; transformers
registers `Glm4vProcessor` for glm4v_moe), `image_tokens`, vision tower and `encode`; only the chat template and its
use differ.

Prompt format: the GLM-4.5V chat template (CHAT_TEMPLATE), rendered in its non-thinking mode
(`enable_thinking=False`, a decision):

    [gMASK]<sop><|user|>\\n<|begin_of_image|><|image|><|end_of_image|>What colour is the top?/nothink<|assistant|>
    <think></think>\\nred<|endoftext|>

The template writes `\\n<think></think>` into every assistant turn without reasoning (and keeps the reasoning of
a turn after the last user turn); in non-thinking mode it ends each user turn with `/nothink` and the generation
prompt with `<|assistant|>\\n<think></think>`. So the prompt (training and generation alike) ends in the empty think
block and the trained target is `\\n` + the answer + the stop token: `<|endoftext|>` (the tokenizer's eos) after the
last assistant turn, `<|user|>` (written next) after an earlier one, as for GLM-4.1V; both are in the checkpoint's
`eos_token_id`. The fine-tuned model answers directly, as GLM-4.5V does with thinking off; generation decodes
`\\nred` (stripped to "red"). An answer that carries its own `<think>...</think>` does not fit behind the empty
block: such a sample is refused (the "does not render turn k as a prefix" error naming it). The processor's
template gets THINKING_OFF in front (`load`, `load_processor`, `tiny`): non-thinking unless a caller passes
`enable_thinking`, so the fine-tuned checkpoints and exports serve, by default, the prompt they were trained on.

CHAT_TEMPLATE is used by the tiny model only (a checkpoint's processor brings its own template). It is the GLM-4.5V
template family's text as published with the GLM-4.5 / GLM-4.6V checkpoints (image, video, system, user and
assistant parts; the tool-calling parts left out), with GLM-4.5's generation prompt: not compared character for
character with zai-org/GLM-4.5V's chat_template.jinja (no copy of the checkpoint's files at hand; the GLM-4.1V
template of glm4v.py is a different one: no `<think></think>`, no `enable_thinking`).

Traps handled here (besides GLM-4.1V's):
- LoRA targets the attention linears (`q/k/v/o_proj`) only. The routed experts are fused 3-D parameters
  (`mlp.experts.gate_up_proj` [experts, 2 x inter, hidden], `mlp.experts.down_proj`), not `nn.Linear` modules, and
  the dense MLP (layer 0) and shared experts' `gate/up/down_proj` cannot be named either: peft (0.21) converts a
  LoRA config for glm4v_moe (a model transformers 5 fused from per-expert linears) and turns every `gate_proj`,
  `up_proj`, `down_proj` target into `target_parameters` on the fused experts, leaving those `nn.Linear`s
  unadapted; LoRA on the fused experts (peft's ParamWrapper) builds each layer's full expert delta every forward
  (128 x 2816 x 4096 for GLM-4.5V's gate_up_proj), too costly at 106B. The experts, the shared experts, the dense
  MLP and the router (`mlp.gate`, a bare weight transformers keeps in fp32, and its `e_score_correction_bias`)
  stay frozen under LoRA and are trained in full fine-tuning.
- bitsandbytes replaces `nn.Linear`s only: a 4-bit base leaves the routed experts, ~100B of GLM-4.5V's 108B
  parameters, in bf16; quantisation saves little here (configs/glm4v_moe's recipe trains LoRA on a bf16 base).
- transformers keeps the router's weight in fp32 in a bf16 model (`_keep_in_fp32_modules_strict`): FSDP v1 cannot
  flatten such a decoder layer ("Must flatten tensors with uniform dtype"); the recipe names FSDP v2.
- The router's auxiliary load-balancing loss is not added (`output_router_logits` off, as in the checkpoint's
  config): the trained loss is the language-model loss the contract compares.
"""

from __future__ import annotations

from vlmtune.models import glm4v
from vlmtune.models.family import Batch, Loaded, ModelFamily

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""LoRA's targets: the attention linears (the MLP names would put peft's LoRA on the fused experts, above)."""
TEMPLATE_KWARGS = {"enable_thinking": False}
NOTHINK = "/nothink"
"""A special token of the checkpoint's tokenizer, which the template appends to user turns in non-thinking mode."""

# The GLM-4.5V template family's text (see the module docstring: reconstructed, tool parts left out).
CHAT_TEMPLATE = (r"""[gMASK]<sop>
{%- macro visible_text(content) -%}
    {%- if content is string -%}
        {{- content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}
                {{- item.text }}
            {%- elif item is mapping and (item.type == 'image' or 'image' in item) -%}
                <|begin_of_image|><|image|><|end_of_image|>
            {%- elif item is mapping and (item.type == 'video' or 'video' in item) -%}
                <|begin_of_video|><|video|><|end_of_video|>
            {%- elif item is string -%}
                {{- item }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- content }}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_user_index=-1) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {% set ns.last_user_index = loop.index0 -%}
    {%- endif %}
{%- endfor %}
{% for m in messages %}
{%- if m.role == 'user' -%}<|user|>
{% if m.content is string %}
{{ m.content }}
{%- else %}
{%- for item in m.content %}
{% if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>{% elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>{% elif item.type == 'text' %}
{{ item.text }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '/nothink' if (enable_thinking is defined and not enable_thinking and """  # one template line, split here
    r"""not visible_text(m.content).endswith("/nothink")) else '' -}}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- set reasoning_content = '' %}
{%- set content = visible_text(m.content) %}
{%- if m.reasoning_content is string %}
    {%- set reasoning_content = m.reasoning_content %}
{%- else %}
    {%- if '</think>' in content %}
        {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
    {%- endif %}
{%- endif %}
{%- if loop.index0 > ns.last_user_index and reasoning_content -%}
{{ '\n<think>' + reasoning_content.strip() +  '</think>'}}
{%- else -%}
{{ '\n<think></think>' }}
{%- endif -%}
{%- if content.strip() -%}
{{ '\n' + content.strip() }}
{%- endif -%}
{%- elif m.role == 'system' -%}
<|system|>
{{ visible_text(m.content) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    <|assistant|>{{- '\n<think></think>' if (enable_thinking is defined and not enable_thinking) else '' -}}
{%- endif -%}""")


THINKING_OFF = "{%- if enable_thinking is not defined -%}{%- set enable_thinking = false -%}{%- endif -%}"
"""Put before the checkpoint's template: `enable_thinking` false unless the caller passes it (renders nothing)."""


def thinking_off(processor):
    """`processor` with its chat template in non-thinking mode by default (THINKING_OFF in front, once), so that a
    checkpoint and export of the fine-tuned model serve the prompt it was trained on."""
    template = processor.chat_template
    if isinstance(template, str) and not template.startswith(THINKING_OFF):
        processor.chat_template = THINKING_OFF + template
    return processor


def load(cfg) -> Loaded:
    loaded = glm4v.load(cfg, "glm4v_moe")
    thinking_off(loaded.processor)
    return loaded


def load_processor(path, **options):
    return thinking_off(glm4v.load_processor(path, **options))


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """glm4v.encode through the template's non-thinking mode: labels on `\\n` + each answer + its stop token."""
    return glm4v.encode(processor, samples, images, mode, max_length, template_kwargs=TEMPLATE_KWARGS)


def tiny() -> Loaded:
    """A random GLM-4.5V: glm4v's tiny ViT and decoder shape; decoder layer 0 a dense MLP, layer 1 a shared expert
    and 4 routed experts, 2 per token (one expert group, as in the checkpoint)."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    processor = thinking_off(glm4v.build_processor(CHAT_TEMPLATE, (NOTHINK,)))
    text = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0)
    return glm4v.build_tiny(Glm4vMoeConfig, Glm4vMoeForConditionalGeneration, text, "glm4v_moe", processor)


FAMILY = ModelFamily(
    name="glm4v_moe",
    description="GLM-4.5V (zai-org/GLM-4.5V): GLM-4.1V's ViT -> downsample + patch merger -> mixture-of-experts "
                "GLM-4.5-Air with M-RoPE",
    load=load,
    encode=encode,
    # regex: the language model's attention linears only (see the traps: peft maps MLP names to the experts)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=glm4v.FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=glm4v.FAMILY.image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("downsample", "merger"),
    vision_cache=True,  # takes mm_encoder_outputs, as GLM-4.1V: the frozen-vision cache applies
    packing=True,  # with each sample's M-RoPE positions, as GLM-4.1V (qwen2_vl.pack_inputs)
    pack_inputs=glm4v.FAMILY.pack_inputs,
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.visual",
)
