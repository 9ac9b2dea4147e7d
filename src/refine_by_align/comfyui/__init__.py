"""ComfyUI custom-node package for refine-by-align: link this folder into ``ComfyUI/custom_nodes``
(see the README's "ComfyUI" section). The import is absolute, so ComfyUI may load the folder under
any module name as long as ``refine_by_align`` is installed in its Python environment."""

from refine_by_align.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
