"""Full text of a fetched article page as Markdown: charset decoding and boilerplate removal (no I/O)."""

from __future__ import annotations

import codecs
import re
from urllib.parse import urlsplit

# Pages past this are cut before parsing: an article's text sits in its first megabytes,
# and lxml's tree of a larger page costs several times its size in memory.
MAX_INPUT_BYTES = 5 * 1024 * 1024
# Markdown past this is cut at a paragraph: a news article is rarely over 20k characters,
# so more is a page of listings or a book, and would swamp the exported document.
MAX_OUTPUT_CHARS = 100_000
TRUNCATED_NOTE = "（正文过长，已截断）"
# How far into the page a <meta charset> is looked for. The HTML standard says 1024
# bytes; Chinese portals often put long comments and scripts first.
META_SCAN_BYTES = 8192
# Charset detection reads a sample: enough text to tell GB18030 from Big5 from UTF-8.
DETECT_SAMPLE_BYTES = 256 * 1024

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Servers label HTML with these too; the body is sniffed before it is parsed.
SNIFFED_TYPES = frozenset({"", "text/plain", "application/octet-stream", "application/xml", "text/xml"})

# Labels that name the same decoder in the WHATWG Encoding standard, which browsers follow:
# every GB label decodes as GB18030 (a superset that also reads the bytes GBK sites really
# send), Big5 as Big5-HKSCS, Latin-1 and ASCII as windows-1252.
_LABELS = {
    **dict.fromkeys(
        (
            "gb2312",
            "gb_2312",
            "gb_2312-80",
            "gbk",
            "x-gbk",
            "cp936",
            "ms936",
            "windows-936",
            "chinese",
            "csgb2312",
            "csiso58gb231280",
            "iso-ir-58",
            "gb18030",
            "euc-cn",
            "euccn",
        ),
        "gb18030",
    ),
    **dict.fromkeys(("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5"), "big5hkscs"),
    **dict.fromkeys(
        (
            "ascii",
            "us-ascii",
            "iso-8859-1",
            "iso8859-1",
            "latin1",
            "latin-1",
            "l1",
            "cp1252",
            "windows-1252",
            "ansi_x3.4-1968",
            "cp819",
            "ibm819",
        ),
        "cp1252",
    ),
}
# Never honoured from a label: UTF-16/32 show themselves by a byte order mark, and UTF-7
# lets a page hide markup from anything that reads it as ASCII.
_REFUSED_CODECS = frozenset({"utf-7", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"})
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_HTTP_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
# <meta charset=x> and <meta http-equiv="Content-Type" content="text/html; charset=x">.
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_HTML_SNIFF = re.compile(
    rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|title|article|div|p)\b", re.IGNORECASE | re.DOTALL
)
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_SAFE_LINK_SCHEMES = ("http", "https")
_LINK_NOISE = re.compile(r"[\x00-\x20\x7f]")  # browsers drop these inside a scheme
_MAX_CHAR_BYTES = 4  # longest character in UTF-8 and GB18030
_BLANK_RUNS = re.compile(r"\n{3,}")


def extract_markdown(body: bytes, *, url: str, content_type: str | None) -> str | None:
    """The article text of an HTML page as Markdown, or None when the page has none.

    `url` resolves relative links (nothing is fetched); `content_type` is the HTTP header
    as sent, charset included. Links are kept when they are http(s), images are dropped.
    CPU-bound (lxml): call it in a worker thread from async code.
    """
    body = body[:MAX_INPUT_BYTES]
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in HTML_TYPES and not (media_type in SNIFFED_TYPES and _looks_like_html(body)):
        return None
    text = _XML_DECLARATION.sub("", decode_html(body, content_type))
    # Imported on first use: trafilatura and lxml weigh tens of MB that a daemon without
    # full-text fetching never needs.
    import trafilatura

    tree = trafilatura.load_html(text)
    if tree is None:
        return None
    for anchor in tree.iter("a"):
        href = anchor.get("href")
        if href is not None and not _is_safe_link(href):
            del anchor.attrib["href"]
    markdown = trafilatura.extract(
        tree,
        url=url,
        output_format="markdown",
        include_links=True,
        include_images=False,
        include_tables=True,
        include_comments=False,  # readers' comments are not the article
        include_formatting=True,
        deduplicate=False,
    )
    if not markdown or not markdown.strip():
        return None
    return _cap(_BLANK_RUNS.sub("\n\n", markdown.strip()))


def decode_html(body: bytes, content_type: str | None) -> str:
    """Decode an HTML body the way a browser picks its encoding, with detection as the fallback.

    Order: byte order mark, HTTP charset, <meta charset>; a declared charset that does not
    decode cleanly (a GBK page sent as "utf-8" is common) loses to detection when detection
    decodes with fewer errors. Without a declaration: UTF-8 if valid, else detection.
    """
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(encoding, "replace")
    declared = _http_charset(content_type) or _meta_charset(body)
    clean = _decode_strict(body, declared or "utf-8")
    if clean is not None:
        return clean
    detected = _detect(body)
    candidates = [enc for enc in (declared, detected, "utf-8") if enc is not None]
    # Fewest replacement characters wins; ties go to the declaration, then detection.
    decoded = [body.decode(enc, "replace") for enc in dict.fromkeys(candidates)]
    return min(decoded, key=lambda s: s.count("\ufffd"))


def normalize_charset(label: str) -> str | None:
    """A Python codec name for a charset label, as a browser would map it; None when unknown."""
    label = label.strip().strip("\"'").lower()
    if label in _LABELS:
        return _LABELS[label]
    try:
        name = codecs.lookup(label).name
        b"a".decode(name)  # refuses codecs that are not text encodings (zlib, base64, rot13)
    except (LookupError, UnicodeDecodeError):
        return None
    if name in _REFUSED_CODECS:
        return None
    return _LABELS.get(name, name)


def _http_charset(content_type: str | None) -> str | None:
    match = _HTTP_CHARSET.search(content_type or "")
    return normalize_charset(match[1]) if match else None


def _meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body[:META_SCAN_BYTES])
    return normalize_charset(match[1].decode("ascii")) if match else None


def _decode_strict(body: bytes, encoding: str) -> str | None:
    """`body` decoded without errors, forgiving a character cut off at the end (a capped body)."""
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(body) - _MAX_CHAR_BYTES:
            return None
        try:
            return body[: exc.start].decode(encoding)
        except UnicodeDecodeError:
            return None


def _detect(body: bytes) -> str | None:
    import charset_normalizer  # 2.6 MB of tables: loaded when a page needs its charset guessed

    best = charset_normalizer.from_bytes(body[:DETECT_SAMPLE_BYTES]).best()
    return normalize_charset(best.encoding) if best is not None else None


def _looks_like_html(body: bytes) -> bool:
    return _HTML_SNIFF.match(body[:1024]) is not None


def _is_safe_link(href: str) -> bool:
    cleaned = _LINK_NOISE.sub("", href)
    try:
        scheme = urlsplit(cleaned).scheme.lower()
    except ValueError:
        return False
    return scheme in _SAFE_LINK_SCHEMES or (scheme == "" and not cleaned.startswith("\\"))


def _cap(markdown: str) -> str:
    if len(markdown) <= MAX_OUTPUT_CHARS:
        return markdown
    head = markdown[:MAX_OUTPUT_CHARS]
    cut = head.rfind("\n\n")
    if cut < MAX_OUTPUT_CHARS // 2:
        cut = head.rfind("\n")
    if cut < MAX_OUTPUT_CHARS // 2:
        cut = MAX_OUTPUT_CHARS
    return head[:cut].rstrip() + "\n\n" + TRUNCATED_NOTE
