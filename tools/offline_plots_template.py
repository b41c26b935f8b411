"""Write conf/plots/offline.html: DVC's plots page template with the vega renderer inline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline it stays blank. This
template has no `{scripts}` placeholder (where DVC would put its CDN tags) and carries the three
minified builds instead. Regenerate after an upgrade (versions and licences: conf/plots/NOTICE):

    cd /tmp && npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
    for f in vega-*.tgz; do mkdir -p ${f%.tgz} && tar xzf $f -C ${f%.tgz}; done
    python tools/offline_plots_template.py /tmp/vega-5.33.1/package/build/vega.min.js \\
        /tmp/vega-lite-5.23.0/package/build/vega-lite.min.js \\
        /tmp/vega-embed-6.29.0/package/build/vega-embed.min.js

Majors 5 / 5 / 6: the ones DVC's templates (vega-lite v5 schema) and its own page use.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "conf/plots/offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>vld: DVC plots</title>
    <!-- vega, vega-lite, vega-embed inline (BSD-3-Clause; conf/plots/NOTICE): no network needed -->
{libraries}
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main(builds: list[str]) -> int:
    if len(builds) != 3:
        sys.exit(__doc__)
    scripts = []
    for build in builds:
        text = Path(build).read_text(encoding="utf-8")
        # the source map is not shipped; a browser would look for it next to the page
        text = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", text)
        if "</script" in text.lower() or any(f"{{{p}}}" in text for p in ("plot_divs", "scripts", "refresh_tag")):
            sys.exit(f"{build}: holds a sequence that would break the inline <script> or DVC's placeholders")
        scripts.append(f"<script>{text}</script>")
    page = PAGE.replace("{libraries}", "\n".join(scripts))
    OUT.write_text(page, encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
