"""Images as self-contained HTML `<img>` sources: model inputs (for `palimix show`'s
contact sheet and the demo report) and decoded or generated pixels (the demo report's
text-to-image rows)."""

from __future__ import annotations

import base64
import io


def png_data_uri(image, size: int | None = None) -> str:
    """A [-1, 1] float image [H, W, 3] as a `data:image/png;base64,...` URI; `size`
    enlarges it (nearest neighbour: a 64-pixel image stays crisp) to size x size."""
    import numpy as np

    pixels = np.clip((np.asarray(image, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return pixels_data_uri(pixels, size)


def pixels_data_uri(pixels, size: int | None = None) -> str:
    """`png_data_uri` of uint8 pixels [H, W, 3] (a decoded or generated image, a PNG file's)."""
    import numpy as np
    from PIL import Image

    picture = Image.fromarray(np.asarray(pixels, np.uint8))
    if size:
        picture = picture.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
