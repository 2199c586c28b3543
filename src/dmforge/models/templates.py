"""Chat templates dmforge supplies, for base models that ship without one.

They are written to be rendered identically by Hugging Face's Jinja and by llama.cpp's
(the template is embedded in the GGUF and the app renders it with `jinja: true`), so they use
only plain loops, `namespace` and string concatenation.
"""

from __future__ import annotations

# Gemma's turn format: `user` and `model` turns closed by <end_of_turn>. Gemma has no system or
# tool role, so the system prompt opens the first user turn and tool results arrive as a user turn.
GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = 'user' -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] + '<end_of_turn>\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# ChatML, for local base models whose vocabulary has <|im_start|> and <|im_end|>.
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

SUPPLIED_TEMPLATES = {"gemma": GEMMA, "chatml": CHATML}
