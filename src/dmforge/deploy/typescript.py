"""The TypeScript module `dmforge deploy` writes into the app: the model's values for `cactus.ts`, and the
context window the model was trained on, written line for line after `dataset/window.py`.

Everything the app needs to run the model as it was trained and evaluated is in one object:
where the file is, `n_ctx`, the stop token, the completion parameters with every sampler field set
(Cactus fills omitted ones with platform defaults, which on Android means no repetition penalty and
no reply limit), the tool-call grammar, and how to count a message's tokens for the window.

The TypeScript itself is templates/dungeonMasterModel.ts; this module only writes its data into it.
"""

from __future__ import annotations

import json

from dmforge.deploy.templates import render

# The rest of the usage comment's initLlama call: in adapter mode the values carry the LoRA adapter to pass.
MERGED_LOAD = "//     n_ctx: dungeonMasterModel.n_ctx });\n"
ADAPTER_LOAD = (
    "//     n_ctx: dungeonMasterModel.n_ctx,\n"
    "//     lora_list: dungeonMasterModel.loraList.map((l) => ({ ...l, path: absolutePathOf(l.path) })) });\n"
)


def typescript_module(values: dict) -> str:
    """The text of `dungeonMasterModel.ts` for `values` (deploy/app.py's app_values)."""
    body = json.dumps(values, indent=2, ensure_ascii=False)
    return render(
        "dungeonMasterModel.ts",
        {
            "load": ADAPTER_LOAD if "loraList" in values else MERGED_LOAD,
            "values": f"export const dungeonMasterModel = {body};\n",
        },
    )
