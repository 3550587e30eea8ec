"""Model-input images as self-contained HTML `<img>` sources (for `palimix show`'s
contact sheet and the demo report)."""

from __future__ import annotations

import base64
import io


def png_data_uri(image, size: int | None = None) -> str:
    """A [-1, 1] float image [H, W, 3] as a `data:image/png;base64,...` URI; `size`
    enlarges it (nearest neighbour: a 64-pixel image stays crisp) to size x size."""
    import numpy as np
    from PIL import Image

    pixels = np.clip((np.asarray(image, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    if size:
        picture = picture.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
