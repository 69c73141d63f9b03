"""Email for tickets: read an inbound message, find its ticket, refuse loops, and build a reply.

Pure: no database, no network, no clock. The mailbox poller and the outbox sender own the I/O.
A malformed message never raises here (service-desk §7: one bad email must not stall intake);
it comes back with whatever could be read and its `defects` listed.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
TICKET_HEADER = "X-Shopdesk-Ticket"
SYNTHETIC_ID_DOMAIN = "synthetic.shopdesk.invalid"
# The first and the newest ids are the ones threading needs (RFC 5322 §3.6.4 allows trimming the middle).
MAX_REFERENCES = 20

TICKET_NUMBER = r"TK\d{4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])-\d{4,}"
_TICKET_NUMBER_RE = re.compile(rf"^{TICKET_NUMBER}$", re.IGNORECASE)
_SUBJECT_TAG_RE = re.compile(rf"[\[【]\s*#\s*({TICKET_NUMBER})\s*[\]】]", re.IGNORECASE)
_REPLY_PREFIX_RE = re.compile(r"^\s*(?:re|aw|sv|回复|回覆|答复)\s*(?:\[\d+\])?\s*[:：]\s*", re.IGNORECASE)
_MSG_ID_RE = re.compile(r"<([^<>\s]+)>")
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")

# Mail labelled GB2312 or GBK routinely carries characters only GB18030 (a superset) maps,
# e.g. 镕 and 喆 in people's names; decoding strictly as GB2312 would garble them.
_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
                    "euc-cn": "gb18030", "gb_2312-80": "gb18030", "x-euc-cn": "gb18030",
                    "ks_c_5601-1987": "cp949", "unknown-8bit": "utf-8", "x-unknown": "utf-8"}

_AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
# X-Auto-Response-Suppress values Exchange puts on its own automatic mail; "None" or DR/RN alone are
# also seen on ordinary person-to-person mail, so they do not count.
_AUTO_SUPPRESS = {"all", "oof", "autoreply"}
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*[\[【(（]?\s*(?:自动回复|自动答复|自動回覆|自動回復|休假自动回复|不在办公室"
    r"|auto[- ]?reply|automatic reply|auto[- ]?response|automatic response|autoreply"
    r"|out of (?:the )?office|ooo\b)(?![a-z])",
    re.IGNORECASE)
_BOUNCE_LOCAL_PARTS = {"mailer-daemon", "postmaster"}

_QUOTE_MARKERS = [
    re.compile(r"^-{2,}\s*(?:original message|原始邮件|原始郵件|original)\s*-{2,}$", re.IGNORECASE),
    re.compile(r"^_{10,}$"),  # Outlook's rule above the From:/Sent: block
    # "在 2026年11月24日 10:00，张三 <a@b> 写道：" (Apple Mail, Foxmail) and "张三 <a@b> 于2026年…写道：" (Gmail);
    # a date digit or an address tells it from a shopper's own "他在信里写道：".
    re.compile(r"^(?=.*[\d@]).{0,200}(?:写道|寫道)\s*[:：]$"),
    re.compile(r"^on\b.{0,300}\bwrote\s*:$", re.IGNORECASE),
]
_HEADER_BLOCK_RE = re.compile(r"^(?:from|发件人|寄件者)\s*[:：]", re.IGNORECASE)
_HEADER_BLOCK_NEXT_RE = re.compile(r"^(?:sent|date|to|发送时间|日期|时间|收件人|寄件日期)\s*[:：]", re.IGNORECASE)


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int
    payload: bytes
    content_id: str | None = None
    inline: bool = False
    skipped_reason: str | None = None


@dataclass(frozen=True)
class InboundMail:
    message_id: str
    message_id_synthetic: bool
    in_reply_to: str | None
    references: list[str]
    from_address: str | None
    from_name: str | None
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None
    text: str
    reply_text: str
    html: str | None
    attachments: list[Attachment]
    is_auto_reply: bool
    is_bounce: bool
    headers: dict[str, str] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- decoding


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode text in its declared charset, falling back to UTF-8, then GB18030, never raising."""
    declared = _codec(charset)
    for candidate in (declared, "utf-8", "gb18030"):
        if candidate is None:
            continue
        try:
            return data.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode(declared or "utf-8", errors="replace")


def _eight_bit(value: str) -> str:
    """Turn raw 8-bit header bytes (kept as surrogates by the parser) back into text."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    return decode_bytes(value.encode("ascii", "surrogateescape"), None)


def _encoded_word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "bB":
            return base64.b64decode(text + "=" * (-len(text) % 4))
        return binascii.a2b_qp(text.encode("ascii"), header=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def decode_header_value(value: str | None) -> str:
    """Decode an RFC 2047 header value; adjacent words in one charset are joined before decoding."""
    if not value:
        return ""
    value = _eight_bit(_FOLD_RE.sub("", str(value)))
    # Runs of ("enc", charset, bytes) or ("text", str); long Chinese subjects are split into several
    # encoded words, sometimes in the middle of a multi-byte character.
    runs: list[tuple] = []
    position = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        between = value[position:match.start()]
        data = _encoded_word_bytes(match.group(2), match.group(3))
        if data is None:
            runs.append(("text", between + match.group(0)))
            position = match.end()
            continue
        charset = match.group(1).split("*", 1)[0].lower()
        previous_is_word = bool(runs) and runs[-1][0] == "enc"
        if between and not (between.isspace() and previous_is_word):
            runs.append(("text", between))
            previous_is_word = False
        if previous_is_word and runs[-1][1] == charset:
            runs[-1] = ("enc", charset, runs[-1][2] + data)
        else:
            runs.append(("enc", charset, data))
        position = match.end()
    runs.append(("text", value[position:]))
    return "".join(decode_bytes(run[2], run[1]) if run[0] == "enc" else run[1] for run in runs)


def _first_msg_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSG_ID_RE.search(value)
    if match:
        return match.group(1)
    bare = value.strip().split()
    if not bare:
        return None
    return bare[0].strip("<>") or None


def _msg_ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSG_ID_RE.findall(value)
    if found:
        return found
    return [token.strip("<>") for token in value.replace(",", " ").split() if token.strip("<>")]


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """Parse address headers first, then decode each display name (a decoded name may hold commas)."""
    pairs = []
    for name, address in getaddresses([_eight_bit(_FOLD_RE.sub("", v)) for v in values]):
        address = address.strip().lower()
        if address:
            pairs.append((decode_header_value(name).strip(), address))
    return pairs


# ---------------------------------------------------------------- html to text


class _TextExtractor(HTMLParser):
    BLOCK = {"p", "div", "tr", "li", "ul", "ol", "table", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6",
             "pre", "hr", "section", "article", "header", "footer"}
    SKIP = {"script", "style", "head", "title", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skipping = 0
        self.preformatted = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "br":
            self.chunks.append("\n")
        elif tag in self.BLOCK:
            self.chunks.append("\n")
            if tag == "pre":
                self.preformatted += 1
        elif tag in ("td", "th"):
            self.chunks.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr"):
            self.chunks.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.chunks.append("\n")
            if tag == "pre":
                self.preformatted = max(0, self.preformatted - 1)

    def handle_data(self, data):
        if self.skipping:
            return
        if not self.preformatted:
            data = re.sub(r"\s+", " ", data)
        self.chunks.append(data)


def html_to_text(html: str) -> str:
    """Render HTML as readable plain text: no scripts or styles, a line break per <br>/<p>/<div>."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # html.parser is lenient, but a mail body is hostile input
        pass
    text = "".join(extractor.chunks).replace("\xa0", " ")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ---------------------------------------------------------------- quotes


def strip_quoted(text: str) -> str:
    """Keep the new part of a reply: the lines above the first quote marker."""
    lines = text.splitlines()
    cut = None
    for index, line in enumerate(lines):
        stripped = line.strip().replace("\xa0", " ")
        if stripped.startswith(">"):
            cut = index
            break
        if any(marker.match(stripped) for marker in _QUOTE_MARKERS):
            cut = index
            break
        # Gmail wraps a long "On <date>, <name> <address>" line before its "wrote:".
        if re.match(r"^on\b", stripped, re.IGNORECASE) and index + 1 < len(lines) and re.match(
                r"^.{0,200}\bwrote\s*:$", lines[index + 1].strip(), re.IGNORECASE):
            cut = index
            break
        # Outlook without the rule: "From: …" directly followed by "Sent: …" / "发送时间: …".
        if _HEADER_BLOCK_RE.match(stripped) and index + 1 < len(lines) and _HEADER_BLOCK_NEXT_RE.match(
                lines[index + 1].strip()):
            cut = index
            break
    if cut is None:
        return text.strip()
    above = "\n".join(lines[:cut]).strip()
    if above:
        return above
    # Bottom-posting: the new text is below the quote.
    unquoted = "\n".join(line for line in lines[cut:] if not line.lstrip().startswith(">")).strip()
    return unquoted or text.strip()


# ---------------------------------------------------------------- parsing


class _RawHeaderPolicy(policy.Compat32):
    """Header values exactly as received, so the decoding rules are ours (see _CHARSET_ALIASES)."""

    def header_fetch_parse(self, name, value):
        return value


_RAW_HEADERS = _RawHeaderPolicy()


@dataclass
class _Body:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    content_type: str = "text/plain"
    report_type: str | None = None


def _defect_names(part: Message) -> list[str]:
    return [type(defect).__name__ for defect in getattr(part, "defects", [])]


def _filename(part: Message) -> str | None:
    name = part.get_filename() or None
    if name and "=?" in name:
        # Chinese clients often put RFC 2047 words in the filename instead of RFC 2231.
        name = decode_header_value(name)
    return (name or "").strip() or None


def _read_part(part: Message, body: _Body, max_attachment_bytes: int) -> None:
    _read_content(part, body, max_attachment_bytes)
    # Collected afterwards: decoding a payload (bad base64, say) adds defects to the part.
    body.defects.extend(_defect_names(part))


def _read_content(part: Message, body: _Body, max_attachment_bytes: int) -> None:
    content_type = part.get_content_type()
    if content_type.startswith("message/"):
        # A forwarded or bounced original (or a bounce's status report) is one attachment, not body text.
        inner = part.get_payload()
        try:
            if isinstance(inner, list):
                data = b"".join(bytes(item) for item in inner if isinstance(item, Message))
            else:
                data = part.get_payload(decode=True) or b""
        except Exception as exc:  # re-serialising a broken inner message
            body.defects.append(f"unreadable {content_type}: {type(exc).__name__}")
            data = b""
        _add_attachment(body, part, content_type, data, max_attachment_bytes)
        return
    if part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                _read_part(child, body, max_attachment_bytes)
        return
    data = part.get_payload(decode=True) or b""
    disposition = part.get_content_disposition()
    filename = _filename(part)
    if content_type in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        text = decode_bytes(data, part.get_content_charset())
        (body.plain if content_type == "text/plain" else body.html).append(text)
        return
    _add_attachment(body, part, content_type, data, max_attachment_bytes)


def _add_attachment(body: _Body, part: Message, content_type: str, data: bytes, limit: int) -> None:
    content_id = _first_msg_id(part.get("Content-ID"))
    too_large = len(data) > limit
    body.attachments.append(Attachment(
        filename=_filename(part), content_type=content_type, size=len(data),
        payload=b"" if too_large else data, content_id=content_id,
        inline=part.get_content_disposition() == "inline",
        skipped_reason="too_large" if too_large else None))


def _read_body(raw: bytes, mail_policy: policy.Policy, max_attachment_bytes: int) -> _Body:
    message = BytesParser(policy=mail_policy).parsebytes(raw)
    body = _Body()
    _read_part(message, body, max_attachment_bytes)
    body.content_type = message.get_content_type()
    report_type = message.get_param("report-type") if body.content_type == "multipart/report" else None
    body.report_type = str(report_type).lower() if isinstance(report_type, str) else None
    return body


def _read_headers(raw: bytes) -> list[tuple[str, str]]:
    headers = BytesParser(policy=_RAW_HEADERS).parsebytes(raw, headersonly=True)
    return [(name, str(value)) for name, value in headers.items()]


def _auto_reply(headers: Mapping[str, list[str]], subject: str, report_type: str | None) -> bool:
    def first(name: str) -> str:
        return (headers.get(name) or [""])[0].strip().lower()

    # RFC 3834 §5: anything but "no" is automatic.
    auto_submitted = first("auto-submitted")
    if auto_submitted and auto_submitted.split(";", 1)[0].strip() != "no":
        return True
    if "x-autoreply" in headers or "x-autorespond" in headers:
        return True
    if first("precedence") in _AUTO_PRECEDENCE:
        return True
    suppress = {token.strip() for token in first("x-auto-response-suppress").split(",")}
    if suppress & _AUTO_SUPPRESS:
        return True
    if report_type == "disposition-notification":  # a read receipt
        return True
    return bool(_AUTO_SUBJECT_RE.match(subject))


def _bounce(headers: Mapping[str, list[str]], from_address: str | None, content_type: str,
            report_type: str | None) -> bool:
    if content_type == "multipart/report" and report_type == "delivery-status":
        return True
    if from_address and from_address.split("@", 1)[0] in _BOUNCE_LOCAL_PARTS:
        return True
    return any(value.strip() == "<>" for value in headers.get("return-path", []))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def parse_message(raw: bytes, *, max_attachment_bytes: int = MAX_ATTACHMENT_BYTES) -> InboundMail:
    """Read an inbound email; never raise, list what was wrong in `defects`."""
    defects: list[str] = []
    try:
        body = _read_body(raw, policy.default, max_attachment_bytes)
    except Exception as exc:  # the default policy's header parser raises on some malformed MIME
        defects.append(f"default policy failed: {type(exc).__name__}")
        try:
            body = _read_body(raw, policy.compat32, max_attachment_bytes)
        except Exception as exc2:
            defects.append(f"compat32 failed: {type(exc2).__name__}")
            body = _Body(plain=[decode_bytes(raw, None)])
    defects.extend(body.defects)

    try:
        header_items = _read_headers(raw)
    except Exception as exc:
        defects.append(f"unreadable headers: {type(exc).__name__}")
        header_items = []
    headers: dict[str, list[str]] = {}
    for name, value in header_items:
        headers.setdefault(name.lower(), []).append(value)

    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    message_id = _first_msg_id(first("message-id"))
    synthetic = message_id is None
    if synthetic:
        # Stable across restarts, so re-importing the same bytes finds the mail already stored.
        message_id = f"{hashlib.sha256(raw).hexdigest()}@{SYNTHETIC_ID_DOMAIN}"
        defects.append("no Message-ID")

    senders = _addresses(headers.get("from", []))
    from_name, from_address = senders[0] if senders else (None, None)
    subject = re.sub(r"\s+", " ", decode_header_value(first("subject"))).strip()

    date = None
    if first("date"):
        try:
            date = parsedate_to_datetime(first("date").strip())
            if date.tzinfo is None:  # "-0000": UTC with no claim about local time (RFC 5322 §3.3)
                date = date.replace(tzinfo=timezone.utc)
        except (TypeError, ValueError, IndexError, OverflowError):
            defects.append("unparseable Date")

    html = "\n".join(body.html) if body.html else None
    text = "\n".join(body.plain) if body.plain else (html_to_text(html) if html else "")
    text = text.replace("\r\n", "\n")
    return InboundMail(
        message_id=message_id,
        message_id_synthetic=synthetic,
        in_reply_to=_first_msg_id(first("in-reply-to")),
        references=_msg_ids(" ".join(headers.get("references", []))),
        from_address=from_address,
        from_name=from_name or None,
        to=_unique(address for _, address in _addresses(headers.get("to", []))),
        cc=_unique(address for _, address in _addresses(headers.get("cc", []))),
        subject=subject,
        date=date,
        text=text,
        reply_text=strip_quoted(text),
        html=html,
        attachments=body.attachments,
        is_auto_reply=_auto_reply(headers, subject, body.report_type),
        is_bounce=_bounce(headers, from_address, body.content_type, body.report_type),
        headers={name: decode_header_value(values[0]) for name, values in headers.items()},
        defects=_unique(defects),
    )


# ---------------------------------------------------------------- threading and loops


def thread_keys(mail: InboundMail) -> list[str]:
    """List the message ids to look a reply's ticket up by: In-Reply-To, then References newest first."""
    keys = [mail.in_reply_to] if mail.in_reply_to else []
    keys.extend(reversed(mail.references))
    return [key for key in _unique(keys) if key != mail.message_id]


def ticket_reference_from(subject: str | None, headers: Mapping[str, str] | None = None) -> str | None:
    """Find a ticket number in our X-Shopdesk-Ticket header or a `[#TK20261124-0007]` subject tag."""
    for name, value in (headers or {}).items():
        if name.lower() == TICKET_HEADER.lower() and value and _TICKET_NUMBER_RE.match(value.strip()):
            return value.strip().upper()
    match = _SUBJECT_TAG_RE.search(subject or "")
    return match.group(1).upper() if match else None


def should_ignore(mail: InboundMail, *, own_addresses: set[str]) -> str | None:
    """Say why a mail must not reach a ticket (bounce, auto_reply, from_self), or None."""
    if mail.is_bounce:
        return "bounce"
    if mail.is_auto_reply:
        return "auto_reply"
    if mail.from_address and mail.from_address in {address.strip().lower() for address in own_addresses}:
        return "from_self"
    return None


# ---------------------------------------------------------------- outbound


def reply_subject(subject: str, ticket_number: str) -> str:
    """Carry the ticket tag exactly once, after at most one "Re: "."""
    tag = f"[#{ticket_number}]"
    rest, replied = subject.strip(), False
    while (match := _REPLY_PREFIX_RE.match(rest)) is not None:
        rest, replied = rest[match.end():], True
    rest = re.sub(rf"[\[【]\s*#\s*{re.escape(ticket_number)}\s*[\]】]", "", rest, flags=re.IGNORECASE)
    rest = re.sub(r"\s+", " ", rest).strip()
    while (match := _REPLY_PREFIX_RE.match(rest)) is not None:  # "[#TK…] Re: …" from a tagged reply
        rest, replied = rest[match.end():], True
    return f"{'Re: ' if replied else ''}{tag} {rest}".strip()


def _angle(message_id: str) -> str:
    return f"<{message_id.strip().strip('<>')}>"


def build_reply(*, from_address: str, from_name: str, to_address: str, subject: str, body_text: str,
                ticket_number: str, message_id_domain: str, in_reply_to: str | None, references: list[str],
                now: datetime, body_html: str | None = None, automatic: bool = False) -> EmailMessage:
    """Build a threaded ticket email; `automatic` marks system mail so other desks do not answer it."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    message = EmailMessage()  # policy.default: UTF-8 names and subjects are RFC 2047 encoded on output
    message["From"] = Address(display_name=from_name or "", addr_spec=from_address)
    message["To"] = Address(addr_spec=to_address)
    message["Subject"] = reply_subject(subject, ticket_number)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{ticket_number}.{uuid.uuid4().hex}@{message_id_domain}>"
    chain = _unique([ref.strip().strip("<>") for ref in references] + (
        [in_reply_to.strip().strip("<>")] if in_reply_to else []))
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[-(MAX_REFERENCES - 1):]
    if in_reply_to:
        message["In-Reply-To"] = _angle(in_reply_to)
    if chain:
        message["References"] = " ".join(_angle(ref) for ref in chain)
    message[TICKET_HEADER] = ticket_number
    if automatic:
        # RFC 3834 §5; the Exchange header stops out-of-office replies to our notifications.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
    message.set_content(body_text, charset="utf-8")
    if body_html is not None:
        message.add_alternative(body_html, subtype="html", charset="utf-8")
    return message
