"""Render a report (sections of blocks) as Markdown and as one self-contained HTML page.

Blocks: ("p", text) · ("list", [text]) · ("table", headers, rows) · ("img", path, caption) ·
("obs", [Observation]) · ("details", summary, [(label, text)]), a collapsible example (HTML <details>).
Images are inlined as base64 in the HTML: no network, one file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path


def clip(text: str | None, width: int = 60) -> str | None:
    """A text short enough for a heading or a table cell (a rambling model's first line can fill the screen)."""
    return text if text is None or len(text) <= width else text[:width - 1] + "…"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:960px;margin:0 auto;padding:1rem;
line-height:1.5;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f3f3f3}
figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#555}
.obs li{margin:.35rem 0}.rule{display:block;font-size:.8rem;color:#666}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.4rem;margin:.2rem 0}details{margin:.3rem 0}
.good{color:#11632b}.watch{color:#9a4b00}.info{color:#244a7a}.tag{font-weight:600;font-size:.8rem}
@media print{body{max-width:none}figure,table,li{page-break-inside:avoid}a{color:inherit}}
"""
TAGS = {"good": "✔ worked", "watch": "⚠ watch", "info": "ℹ note"}


def markdown(title: str, sections: list[tuple[str, list]], run_dir: Path) -> str:
    out = [f"# {title}\n"]
    for heading, blocks in sections:
        out.append(f"\n## {heading}\n")
        for block in blocks:
            kind = block[0]
            if kind == "p":
                out.append(block[1] + "\n")
            elif kind == "list":
                out.extend(f"- {item}" for item in block[1])
                out.append("")
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "---|" * len(headers))
                out.extend("| " + " | ".join(_cell(c).replace("|", "\\|") for c in r) + " |" for r in rows)
                out.append("")
            elif kind == "img":
                rel = Path(block[1]).resolve().relative_to(run_dir.resolve())
                out.append(f"![{block[2]}]({rel.as_posix()})\n\n*{block[2]}*\n")
            elif kind == "obs":
                out.extend(f"- **{TAGS[o.kind]}** — {o.text}  \n  _Rule: {o.rule}_" for o in block[1])
                out.append("")
            elif kind == "details":
                out.append(f"<details><summary>{html.escape(block[1])}</summary>\n")
                for label, text in block[2]:
                    out.append(f"**{label}**\n\n```\n{text.replace('```', '` ` `')}\n```\n")
                out.append("</details>\n")
    return "\n".join(out) + "\n"


def html_page(title: str, sections: list[tuple[str, list]]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", "<nav><ul>"]
    body += [f'<li><a href="#s{i}">{e(h)}</a></li>' for i, (h, _) in enumerate(sections)]
    body.append("</ul></nav>")
    for i, (heading, blocks) in enumerate(sections):
        body.append(f'<section id="s{i}"><h2>{e(heading)}</h2>')
        for block in blocks:
            kind = block[0]
            if kind == "p":
                body.append(f"<p>{e(block[1])}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in r) + "</tr>" for r in block[2])
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
                            '</table></div>')
            elif kind == "img":
                data = base64.b64encode(Path(block[1]).read_bytes()).decode()
                body.append(f'<figure><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(block[2])}</figcaption></figure>")
            elif kind == "details":
                parts = "".join(f"<dt>{e(label)}</dt><dd><pre>{e(text)}</pre></dd>" for label, text in block[2])
                body.append(f"<details><summary>{e(block[1])}</summary><dl>{parts}</dl></details>")
            elif kind == "obs":
                items = "".join(f'<li class="{o.kind}"><span class="tag">{TAGS[o.kind]}</span> — {e(o.text)}'
                                f'<span class="rule">Rule: {e(o.rule)}</span></li>' for o in block[1])
                body.append(f'<ul class="obs">{items}</ul>')
        body.append("</section>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
