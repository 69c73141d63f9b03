"""Inbound and outbound ticket email: parsing, threading, loop protection and replies (service-desk §1, §3)."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest

from shopdesk.integrations.mail import (SYNTHETIC_ID_DOMAIN, build_reply, decode_header_value, html_to_text,
                                        parse_message, reply_subject, should_ignore, strip_quoted,
                                        thread_keys, ticket_reference_from)

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
DESK = "help@shop.example.cn"
SHOPPER = "zhang.san@example.com"


def raw(text: str) -> bytes:
    """A literal message as a mail server stores it (CRLF line ends)."""
    return text.lstrip("\n").replace("\n", "\r\n").encode("utf-8")


def shopper_mail(subject: str, body: str, **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"张三 <{SHOPPER}>"
    message["To"] = DESK
    message["Subject"] = subject
    message["Date"] = "Mon, 24 Nov 2026 10:00:00 +0800"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


# ---------------------------------------------------------------- threading


def test_a_three_message_thread_chains_back_to_the_first_mail():
    # given the shopper's first mail
    first = parse_message(shopper_mail("订单没收到", "我的包裹还没到。", Message_ID="<first.1@example.com>"))
    # when the desk replies and the shopper answers the reply
    reply = build_reply(from_address=DESK, from_name="小店客服", to_address=SHOPPER, subject=first.subject,
                        body_text="您好，正在查询。", ticket_number="TK20261124-0007",
                        message_id_domain="shop.example.cn", in_reply_to=first.message_id,
                        references=first.references, now=NOW)
    second = parse_message(bytes(reply))
    third = parse_message(shopper_mail(
        "Re: " + second.subject, "谢谢！\n\n在 2026年11月24日 10:05，小店客服 <help@shop.example.cn> 写道：\n> 您好，正在查询。",
        Message_ID="<third.3@example.com>", In_Reply_To=f"<{second.message_id}>",
        References=f"<{first.message_id}> <{second.message_id}>"))
    # then each mail points at the one before it, newest first
    assert thread_keys(first) == []
    assert thread_keys(second) == ["first.1@example.com"]
    assert thread_keys(third) == [second.message_id, "first.1@example.com"]
    assert second.message_id.startswith("TK20261124-0007.")
    # and the subject tag survives the round trip once
    assert third.subject == "Re: [#TK20261124-0007] 订单没收到"
    assert ticket_reference_from(third.subject, third.headers) == "TK20261124-0007"
    assert third.reply_text == "谢谢！"


def test_thread_keys_put_in_reply_to_first_and_skip_duplicates_and_the_mail_itself():
    mail = parse_message(raw("""
From: a@example.com
Message-ID: <self@x>
In-Reply-To: <c@x> (message from desk)
References: <a@x>
 <b@x> <c@x> <self@x>

body
"""))
    assert mail.in_reply_to == "c@x"
    assert mail.references == ["a@x", "b@x", "c@x", "self@x"]
    assert thread_keys(mail) == ["c@x", "b@x", "a@x"]


@pytest.mark.parametrize("subject, headers, expected", [
    ("Re: [#TK20261124-0007] 退款", {}, "TK20261124-0007"),
    ("回复：【#TK20261124-12345】退款", {}, "TK20261124-12345"),
    ("re: [# tk20261124-0007 ] refund", {}, "TK20261124-0007"),
    ("no tag here", {"X-Shopdesk-Ticket": "TK20261124-0008"}, "TK20261124-0008"),
    ("[#TK20261124-0007]", {"x-shopdesk-ticket": "TK20261124-0008"}, "TK20261124-0008"),
    ("[#TK20261124-0007]", {"X-Shopdesk-Ticket": "garbage"}, "TK20261124-0007"),
    ("[#TK20261324-0007] month 13", {}, None),
    ("[#TK20261124-007] three digits", {}, None),
    ("TK20261124-0007 without brackets", {}, None),
    ("", None, None),
])
def test_ticket_reference_from_subject_tag_or_header(subject, headers, expected):
    assert ticket_reference_from(subject, headers) == expected


# ---------------------------------------------------------------- Chinese charsets and transfer encodings


def test_gbk_subject_and_body_are_decoded():
    # given a Foxmail-style message in GBK, with a name labelled GB2312 that needs GBK (镕, 喆)
    name = base64.b64encode("王镕喆".encode("gbk")).decode()
    subject = base64.b64encode("退款问题：订单未到账".encode("gbk")).decode()
    body = base64.encodebytes("您好，订单 AS20261123-0007 的退款还没有到账。".encode("gbk")).decode()
    message = raw(f"""
From: =?GB2312?B?{name}?= <wang@example.cn>
To: {DESK}
Subject: =?GBK?B?{subject}?=
Message-ID: <gbk.1@example.cn>
MIME-Version: 1.0
Content-Type: text/plain; charset="gb2312"
Content-Transfer-Encoding: base64

{body}""")
    # when it is parsed
    mail = parse_message(message)
    # then everything reads as Chinese
    assert mail.from_name == "王镕喆"
    assert mail.subject == "退款问题：订单未到账"
    assert mail.text.strip() == "您好，订单 AS20261123-0007 的退款还没有到账。"
    assert mail.defects == []


def test_raw_eight_bit_headers_and_an_unlabelled_gbk_body():
    message = ("From: 李四 <li@example.cn>\r\nSubject: 发票怎么开\r\nMessage-ID: <8bit@x>\r\n"
               "Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode("utf-8") + \
        "请开增值税普通发票".encode("gbk")
    mail = parse_message(message)
    assert (mail.from_name, mail.from_address, mail.subject) == ("李四", "li@example.cn", "发票怎么开")
    assert mail.text == "请开增值税普通发票"


def test_quoted_printable_body():
    mail = parse_message(raw("""
From: a@example.com
Subject: =?utf-8?Q?=E9=80=80=E6=AC=BE?= please
Message-ID: <qp@x>
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

=E4=BD=A0=E5=A5=BD=EF=BC=8C=E8=AF=B7=E9=97=AE=E9=80=80=E6=AC=BE=E5=88=B0=E8=B4=A6=
=E4=BA=86=E5=90=97=EF=BC=9F
second line
"""))
    assert mail.subject == "退款 please"
    assert mail.text.splitlines() == ["你好，请问退款到账了吗？", "second line"]


def test_base64_body_and_a_subject_split_inside_a_character():
    # "退款" split across two encoded words in the middle of 款's three UTF-8 bytes
    whole = "退款".encode("utf-8")
    left, right = base64.b64encode(whole[:4]).decode(), base64.b64encode(whole[4:]).decode()
    mail = parse_message(raw(f"""
From: a@example.com
Subject: =?UTF-8?B?{left}?=
 =?UTF-8?B?{right}?= =?utf-8?q?_now?=
Message-ID: <b64@x>
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: base64

{base64.b64encode("包裹破损了".encode()).decode()}
"""))
    assert mail.subject == "退款 now"
    assert mail.text == "包裹破损了"


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"),
    ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
    ("=?utf-8?q?a?= text =?utf-8?q?b?=", "a text b"),
    ("Re:=?utf-8?B?5L2g5aW9?=", "Re:你好"),
    ("=?x-unknown-charset?q?abc?=", "abc"),
    ("=?utf-8?B?not base64!?=", "=?utf-8?B?not base64!?="),
    ("=?utf-8*zh?Q?=E4=BD=A0?=", "你"),
    (None, ""),
])
def test_decode_header_value(value, expected):
    assert decode_header_value(value) == expected


def test_addresses_are_split_before_names_are_decoded():
    # an encoded display name that decodes to a comma must not split the address
    name = base64.b64encode("张, 三".encode()).decode()
    mail = parse_message(raw(f"""
From: "=?UTF-8?B?{name}?=" <Zhang@Example.COM>
To: =?UTF-8?B?{name}?= <one@x.cn>, two@x.cn
Cc: "客服" <help@x.cn>, One@X.cn
Message-ID: <addr@x>

hi
"""))
    assert (mail.from_name, mail.from_address) == ("张, 三", "zhang@example.com")
    assert mail.to == ["one@x.cn", "two@x.cn"]
    assert mail.cc == ["help@x.cn", "one@x.cn"]


@pytest.mark.parametrize("header, expected", [
    ("Date: Mon, 24 Nov 2026 10:00:00 +0800", datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)),
    ("Date: 24 Nov 2026 02:00:00 -0000", datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)),
    ("Date: 2026年11月24日", None),
    ("X-No-Date: 1", None),
])
def test_dates_are_aware_or_none(header, expected):
    mail = parse_message(raw(f"From: a@x\nMessage-ID: <d@x>\n{header}\n\nbody\n"))
    assert mail.date == expected
    if expected is not None:
        assert mail.date.utcoffset() is not None
    assert ("unparseable Date" in mail.defects) == header.startswith("Date: 2026年")


# ---------------------------------------------------------------- HTML and attachments


def test_an_html_only_message_becomes_readable_text():
    mail = parse_message(raw("""
From: a@example.com
Message-ID: <html@x>
Content-Type: text/html; charset=utf-8

<html><head><title>ignored</title><style>p { color: red }</style></head>
<body><script>alert("x")</script><div>您好&nbsp;客服，</div><p>订单号：<b>AS20261123-0007</b></p>
<p>第一行<br>第二行<br/>第三行</p><table><tr><td>数量</td><td>2</td></tr></table>
<pre>  keep   spaces</pre>&lt;not a tag&gt;</body></html>
"""))
    assert mail.html is not None and "<script>" in mail.html
    assert mail.text.splitlines() == ["您好 客服，", "", "订单号：AS20261123-0007", "", "第一行", "第二行", "第三行",
                                      "", "数量 2", "", "keep   spaces", "<not a tag>"]


@pytest.mark.parametrize("html, expected", [
    ("a<br>b", "a\nb"),
    ("<p>a</p><p>b</p>", "a\n\nb"),
    ("<div>a</div>\n\n\n<div>b</div>", "a\n\nb"),
    ("<style>x</style><script>y</script>z", "z"),
    ("a\n   b", "a b"),
    ("<p>unclosed <b>tags", "unclosed tags"),
    ("&lt;&amp;&gt;&#20320;", "<&>你"),
])
def test_html_to_text(html, expected):
    assert html_to_text(html) == expected


def test_plain_text_is_preferred_over_html():
    message = EmailMessage()
    message["From"], message["Message-ID"] = "a@x", "<alt@x>"
    message.set_content("plain version")
    message.add_alternative("<p>html version</p>", subtype="html")
    mail = parse_message(message.as_bytes())
    assert mail.text.strip() == "plain version"
    assert mail.html.strip() == "<p>html version</p>"
    assert mail.attachments == []


def test_attachment_with_an_rfc_2231_chinese_filename():
    mail = parse_message(raw("""
From: a@example.com
Message-ID: <att@x>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

见附件
--b1
Content-Type: application/pdf
Content-Disposition: attachment;
 filename*=UTF-8''%E5%8F%91%E7%A5%A8%202026%E5%B9%B411%E6%9C%88.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1
Content-Type: image/jpeg; name="=?GBK?B?xrfWysrVvt0=?=.jpg"
Content-Disposition: attachment;
 filename*0*=gbk''%C6%B7%D6%CA;
 filename*1*=%CE%CA%CC%E2.jpg
Content-Transfer-Encoding: base64

/9j/4AAQ
--b1
Content-Type: image/png
Content-Disposition: inline
Content-ID: <logo@x>
Content-Transfer-Encoding: base64

iVBORw0K
--b1--
"""))
    assert mail.text.strip() == "见附件"
    pdf, jpeg, png = mail.attachments
    assert (pdf.filename, pdf.content_type, pdf.payload, pdf.size) == (
        "发票 2026年11月.pdf", "application/pdf", b"%PDF-1.4\n", 9)
    assert (jpeg.filename, jpeg.content_type) == ("品质问题.jpg", "image/jpeg")
    assert (png.filename, png.content_id, png.inline) == (None, "logo@x", True)
    assert all(a.skipped_reason is None for a in mail.attachments)


def test_rfc_2047_filename_from_chinese_clients():
    encoded = base64.b64encode("退货单.xlsx".encode("gbk")).decode()
    mail = parse_message(raw(f"""
From: a@example.com
Message-ID: <att2@x>
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/octet-stream; name="=?GBK?B?{encoded}?="
Content-Disposition: attachment; filename="=?GBK?B?{encoded}?="

abc
--b--
"""))
    assert [a.filename for a in mail.attachments] == ["退货单.xlsx"]


def test_an_oversized_attachment_is_kept_as_metadata_only():
    message = EmailMessage()
    message["From"], message["Message-ID"] = "a@x", "<big@x>"
    message.set_content("两张照片")
    message.add_attachment(b"x" * 2048, maintype="image", subtype="jpeg", filename="big.jpg")
    message.add_attachment(b"y" * 10, maintype="image", subtype="jpeg", filename="small.jpg")
    mail = parse_message(message.as_bytes(), max_attachment_bytes=1024)
    big, small = mail.attachments
    assert (big.filename, big.size, big.payload, big.skipped_reason) == ("big.jpg", 2048, b"", "too_large")
    assert (small.size, small.payload, small.skipped_reason) == (10, b"y" * 10, None)
    assert mail.text.strip() == "两张照片"


def test_a_forwarded_message_is_an_attachment_not_body_text():
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "x@y", "原邮件"
    inner.set_content("inner body")
    outer = EmailMessage()
    outer["From"], outer["Message-ID"] = "a@x", "<fwd@x>"
    outer.set_content("see below")
    outer.add_attachment(inner)
    mail = parse_message(outer.as_bytes())
    assert mail.text.strip() == "see below"
    assert [a.content_type for a in mail.attachments] == ["message/rfc822"]
    assert b"inner body" in mail.attachments[0].payload


# ---------------------------------------------------------------- malformed input never raises


def test_a_truncated_multipart_keeps_what_was_read():
    mail = parse_message(raw("""
From: a@example.com
Subject: cut off
Message-ID: <trunc@x>
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

第一部分完整
--b1
Content-Type: application/pdf; name="a.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
JVBER"""))
    assert mail.text.strip() == "第一部分完整"
    assert mail.subject == "cut off"
    assert [a.filename for a in mail.attachments] == ["a.pdf"]
    assert "CloseBoundaryNotFoundDefect" in mail.defects
    assert "InvalidBase64LengthDefect" in mail.defects  # the cut-off last line


def test_a_message_without_message_id_gets_a_stable_synthetic_one():
    message = raw("From: a@example.com\nSubject: hi\n\nno id\n")
    first, again = parse_message(message), parse_message(message)
    other = parse_message(message + b"!")
    assert first.message_id == again.message_id
    assert first.message_id.endswith("@" + SYNTHETIC_ID_DOMAIN)
    assert first.message_id_synthetic and "no Message-ID" in first.defects
    assert other.message_id != first.message_id
    assert parse_message(raw("From: a@x\nMessage-ID: <>\n\nx\n")).message_id_synthetic


@pytest.mark.parametrize("garbage", [
    b"",
    bytes(range(256)) * 8,
    b"\xff\xfe\x00\x00" * 100,
    b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
    b"From: \x80\x81\nSubject: =?utf-8?B?\xff?=\nContent-Type: text/plain; charset=\"utf-8\\\n\n\xc3",
    b"Content-Type: message/rfc822\n\nContent-Type: multipart/mixed; boundary=x\n\n--x\n",
    b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: multipart/mixed; boundary=a\n\n--a\n",
])
def test_garbage_never_raises(garbage):
    mail = parse_message(garbage)
    assert mail.message_id
    assert isinstance(mail.text, str) and isinstance(mail.defects, list)


@pytest.mark.parametrize("bad_header", [
    "Content-Type: text/plain; charset*",  # the default policy raises IndexError while parsing
    "Content-Disposition: attachment; filename*",  # ... or while reading the filename
])
def test_the_default_policy_failing_falls_back_to_compat32(bad_header):
    mail = parse_message(raw(f"""
From: a@example.com
Message-ID: <fallback@x>
Content-Type: multipart/mixed; boundary=b

--b
{bad_header}

正文还在
--b--
"""))
    assert "default policy failed: IndexError" in mail.defects
    assert "正文还在" in mail.text or mail.attachments[0].payload.decode().strip() == "正文还在"
    assert mail.message_id == "fallback@x"


# ---------------------------------------------------------------- auto replies and bounces


@pytest.mark.parametrize("headers, subject, expected", [
    ({"Auto-Submitted": "auto-replied"}, "Re: 退款", True),
    ({"Auto-Submitted": "auto-generated; owner-email=x@y"}, "hello", True),
    ({"Auto-Submitted": "no"}, "hello", False),
    ({"X-Autoreply": "yes"}, "hello", True),
    ({"X-Autorespond": "Out of office"}, "hello", True),
    ({"Precedence": "bulk"}, "hello", True),
    ({"Precedence": "auto_reply"}, "hello", True),
    ({"Precedence": "first-class"}, "hello", False),
    ({"X-Auto-Response-Suppress": "All"}, "hello", True),
    ({"X-Auto-Response-Suppress": "DR, OOF, AutoReply"}, "hello", True),
    ({"X-Auto-Response-Suppress": "None"}, "hello", False),
    ({}, "自动回复: 关于退款", True),
    ({}, "自动答复: 关于退款", True),
    ({}, "【自动回复】您好", True),
    ({}, "Automatic reply: refund", True),
    ({}, "Auto-Reply: refund", True),
    ({}, "Out of Office: back Monday", True),
    ({}, "AutoReply", True),
    ({}, "Re: your auto reply did not help", False),
    ({}, "Autoreplies are annoying", False),
    ({}, "退款", False),
])
def test_auto_replies_are_recognised(headers, subject, expected):
    mail = parse_message(shopper_mail(subject, "body", Message_ID="<auto@x>", **{
        k.replace("-", "_"): v for k, v in headers.items()}))
    assert mail.is_auto_reply is expected
    assert (should_ignore(mail, own_addresses={DESK}) == "auto_reply") is expected


POSTFIX_BOUNCE = """
Return-Path: <>
Date: Mon, 24 Nov 2026 10:05:00 +0800 (CST)
From: MAILER-DAEMON@mx.shop.example.cn (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: help@shop.example.cn
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="ABC.123/mx.shop.example.cn"
Message-Id: <20261124020500.ABC@mx.shop.example.cn>

This is a MIME-encapsulated message.

--ABC.123/mx.shop.example.cn
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nobody@example.com>: host mx.example.com said: 550 5.1.1 User unknown

--ABC.123/mx.shop.example.cn
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.shop.example.cn

Final-Recipient: rfc822; nobody@example.com
Action: failed
Status: 5.1.1

--ABC.123/mx.shop.example.cn
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Message-ID: <TK20261124-0007.abc@shop.example.cn>
X-Shopdesk-Ticket: TK20261124-0007
Subject: [#TK20261124-0007] =?utf-8?b?6YCA5qy+?=

--ABC.123/mx.shop.example.cn--
"""


def test_a_postfix_bounce_is_recognised():
    mail = parse_message(raw(POSTFIX_BOUNCE))
    assert mail.is_bounce
    assert should_ignore(mail, own_addresses={DESK}) == "bounce"
    assert "could not" in mail.text and "Reporting-MTA" not in mail.text
    status, headers = mail.attachments
    assert status.content_type == "message/delivery-status" and b"Status: 5.1.1" in status.payload
    assert headers.content_type == "text/rfc822-headers" and b"X-Shopdesk-Ticket" in headers.payload
    assert mail.defects == []


@pytest.mark.parametrize("message", [
    "From: someone@example.com\nReturn-Path: <>\nMessage-ID: <b1@x>\n\nbounce\n",
    "From: Postmaster@qq.com\nMessage-ID: <b2@x>\n\nbounce\n",
    "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\nMessage-ID: <b3@x>\n\nbounce\n",
    "From: x@example.com\nMessage-ID: <b4@x>\nContent-Type: multipart/report; report-type=\"delivery-status\";"
    " boundary=r\n\n--r\nContent-Type: text/plain\n\nfailed\n--r--\n",
])
def test_bounce_signals(message):
    assert parse_message(raw(message)).is_bounce


def test_a_read_receipt_is_automatic_but_not_a_bounce():
    mail = parse_message(raw("""
From: a@example.com
Message-ID: <mdn@x>
Content-Type: multipart/report; report-type=disposition-notification; boundary=r

--r
Content-Type: text/plain

Your message was read.
--r--
"""))
    assert (mail.is_auto_reply, mail.is_bounce) == (True, False)


def test_mail_from_our_own_address_is_ignored_and_a_shoppers_mail_is_not():
    ours = parse_message(raw(f"From: Desk <{DESK.upper()}>\nMessage-ID: <own@x>\n\nloop\n"))
    theirs = parse_message(shopper_mail("退款", "你好", Message_ID="<s@x>"))
    assert should_ignore(ours, own_addresses={DESK}) == "from_self"
    assert should_ignore(ours, own_addresses={"Help@Shop.Example.CN "}) == "from_self"
    assert should_ignore(theirs, own_addresses={DESK}) is None


# ---------------------------------------------------------------- quoted text


GMAIL = """Thanks, that works.

On Mon, Nov 24, 2026 at 10:05 AM Shop Support <help@shop.example.cn>
wrote:

> Hello, we have refunded the order.
> Regards
"""
GMAIL_ZH = """好的，收到了

张三 <zhang.san@example.com> 于2026年11月24日周一 上午10:05写道：

> 您好，已退款。
"""
OUTLOOK = """Please check again.

-----Original Message-----
From: Shop Support <help@shop.example.cn>
Sent: Monday, November 24, 2026 10:05 AM
Subject: RE: refund
"""
OUTLOOK_RULE = """请再查一下。

________________________________
发件人: 小店客服 <help@shop.example.cn>
发送时间: 2026年11月24日 10:05
主题: 退款
"""
OUTLOOK_NO_RULE = """See above.

From: Shop Support <help@shop.example.cn>
Sent: Monday, November 24, 2026 10:05 AM
"""
QQ = """好的谢谢
\u00a0
------------------\u00a0原始邮件\u00a0------------------
发件人: "小店客服"<help@shop.example.cn>;
发送时间: 2026年11月24日(星期一) 上午10:05
"""
APPLE_ZH = """已经收到退款

在 2026年11月24日，10:05，小店客服 <help@shop.example.cn> 写道：

您好，已退款。
"""


@pytest.mark.parametrize("body, expected", [
    (GMAIL, "Thanks, that works."),
    (GMAIL_ZH, "好的，收到了"),
    (OUTLOOK, "Please check again."),
    (OUTLOOK_RULE, "请再查一下。"),
    (OUTLOOK_NO_RULE, "See above."),
    (QQ, "好的谢谢"),
    (APPLE_ZH, "已经收到退款"),
    ("new text\n> old\n> older\n", "new text"),
    ("> quoted question\nmy answer below\n", "my answer below"),
    ("no quote at all\nsecond line", "no quote at all\nsecond line"),
    ("他在信里写道：\n商品有问题", "他在信里写道：\n商品有问题"),
    ("From: my order of last week\nthe parcel is missing", "From: my order of last week\nthe parcel is missing"),
])
def test_quoted_text_is_stripped(body, expected):
    assert strip_quoted(body) == expected


def test_reply_text_of_an_html_gmail_reply():
    mail = parse_message(raw("""
From: a@example.com
Message-ID: <gh@x>
Content-Type: text/html; charset=utf-8

<div dir="ltr">还没收到<br></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Nov 24,
 2026 at 10:05 AM Shop &lt;help@shop.example.cn&gt; wrote:<br></div><blockquote class="gmail_quote">已发货</blockquote></div>
"""))
    assert mail.reply_text == "还没收到"
    assert "已发货" in mail.text


# ---------------------------------------------------------------- outbound


@pytest.mark.parametrize("subject, expected", [
    ("退款", "[#TK20261124-0007] 退款"),
    ("Re: 退款", "Re: [#TK20261124-0007] 退款"),
    ("Re: [#TK20261124-0007] 退款", "Re: [#TK20261124-0007] 退款"),
    ("RE: Re: 回复：[#TK20261124-0007] Re[2]: 退款", "Re: [#TK20261124-0007] 退款"),
    ("答复: 退款 [#TK20261124-0007]", "Re: [#TK20261124-0007] 退款"),
    ("Fwd: 退款", "[#TK20261124-0007] Fwd: 退款"),
    ("", "[#TK20261124-0007]"),
])
def test_reply_subject_carries_the_tag_once(subject, expected):
    assert reply_subject(subject, "TK20261124-0007") == expected


def test_build_reply_round_trips_through_parse_message():
    # given a human reply in a thread
    message = build_reply(from_address=DESK, from_name="小店客服", to_address=SHOPPER,
                          subject="Re: Re: [#TK20261124-0007] 包裹破损", body_text="您好，已为您补发。\n",
                          ticket_number="TK20261124-0007", message_id_domain="shop.example.cn",
                          in_reply_to="<m3@example.com>", references=["m1@example.com", "<m2@example.com>"],
                          now=NOW, body_html="<p>您好，已为您补发。</p>")
    data = bytes(message)
    # then the wire form is plain ASCII headers with an RFC 2047 name and no auto-submitted mark
    headers = data.split(b"\n\n", 1)[0].replace(b"\r", b"")
    assert headers.isascii()
    assert re.search(rb"^From: =\?utf-8\?[bq]\?.+\?= <help@shop\.example\.cn>$", headers, re.M | re.I)
    assert b"Auto-Submitted" not in headers
    assert re.fullmatch(r"<TK20261124-0007\.[0-9a-f]{32}@shop\.example\.cn>", message["Message-ID"])
    # and parsing it back gives the same facts
    mail = parse_message(data)
    assert (mail.from_name, mail.from_address, mail.to) == ("小店客服", DESK, [SHOPPER])
    assert mail.subject == "Re: [#TK20261124-0007] 包裹破损"
    assert mail.message_id == message["Message-ID"].strip("<>")
    assert mail.in_reply_to == "m3@example.com"
    assert mail.references == ["m1@example.com", "m2@example.com", "m3@example.com"]
    assert mail.date == NOW
    assert mail.text.strip() == "您好，已为您补发。"
    assert mail.html.strip() == "<p>您好，已为您补发。</p>"
    assert ticket_reference_from("", mail.headers) == "TK20261124-0007"
    assert not mail.is_auto_reply and should_ignore(mail, own_addresses={"x@y"}) is None
    assert mail.defects == []


def test_an_automatic_mail_is_marked_so_desks_do_not_loop():
    message = build_reply(from_address=DESK, from_name="Shop", to_address=SHOPPER, subject="工单已创建",
                          body_text="我们已收到。", ticket_number="TK20261124-0008",
                          message_id_domain="shop.example.cn", in_reply_to=None, references=[], now=NOW,
                          automatic=True)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["In-Reply-To"] is None and message["References"] is None
    mail = parse_message(bytes(message))
    assert should_ignore(mail, own_addresses=set()) == "auto_reply"


def test_long_reference_chains_keep_the_first_and_the_newest():
    references = [f"m{i}@x" for i in range(30)]
    message = build_reply(from_address=DESK, from_name="", to_address=SHOPPER, subject="s", body_text="b",
                          ticket_number="TK20261124-0009", message_id_domain="d", in_reply_to="m30@x",
                          references=references, now=NOW)
    chain = parse_message(bytes(message)).references
    assert len(chain) == 20 and chain[0] == "m0@x" and chain[-1] == "m30@x" and chain[1] == "m12@x"


def test_build_reply_wants_an_aware_now():
    with pytest.raises(ValueError):
        build_reply(from_address=DESK, from_name="", to_address=SHOPPER, subject="s", body_text="b",
                    ticket_number="TK20261124-0009", message_id_domain="d", in_reply_to=None, references=[],
                    now=NOW.replace(tzinfo=None))


def test_two_replies_get_different_message_ids():
    kwargs = dict(from_address=DESK, from_name="", to_address=SHOPPER, subject="s", body_text="b",
                  ticket_number="TK20261124-0009", message_id_domain="d", in_reply_to=None, references=[],
                  now=NOW + timedelta(seconds=1))
    assert build_reply(**kwargs)["Message-ID"] != build_reply(**kwargs)["Message-ID"]
