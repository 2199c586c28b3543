"""Run the pinned converter with one adjustment: rope settings where it looks for them.

The May-2025 converter reads a model's config through `AutoConfig.to_dict()`. Under transformers 5
that moves `rope_theta` into `rope_parameters`, where the converter never looks, so it would omit
`rope.freq_base` and llama.cpp would silently use its default. This wrapper loads the converter as a
module, wraps its `load_hparams` to put the rope settings back at the top level, and runs its
`main()` unchanged. Usage: python -m dmforge.export.run_converter CONVERTER GGUF_PY [converter args...]
"""

from __future__ import annotations

import importlib.util
import sys

from dmforge.export.convert import converter_ready_config


def main() -> None:
    script, gguf_py, *args = sys.argv[1:]
    sys.path.insert(0, gguf_py)  # the converter's own gguf-py, not the newer one pip installed
    for name in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("llama_cpp_convert_hf_to_gguf", script)
    assert spec and spec.loader
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    original = converter.ModelBase.load_hparams

    def load_hparams(dir_model):
        return converter_ready_config(original(dir_model))

    converter.ModelBase.load_hparams = staticmethod(load_hparams)
    sys.argv = [script, *args]
    converter.main()


if __name__ == "__main__":
    main()
