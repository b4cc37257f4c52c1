"""The ``files`` data set: the user's own CSV/JSONL/Parquet/save_to_disk/image-folder data, named in a recipe.

Importing this registers the builder; ``datasets``, ``pyarrow`` and Pillow are imported only when it runs.
"""

from kdforge.data.files.builder import files
from kdforge.data.files.outputs import check_label_count

__all__ = ["check_label_count", "files"]
