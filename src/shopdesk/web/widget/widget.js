/* ShopDesk chat widget: one tag on any page, no build step.
 *
 *   <script src="https://desk.example.com/widget.js" data-store="main" async></script>
 *
 * Optional attributes: data-merchant (when several merchants share a store code), data-lang="en",
 * data-sku / data-order (a product or order card the shopper can send), data-prechat="name,phone,email"
 * (a short form before the first message), data-title, data-open="1" (open at once).
 * A shop that knows its logged-in shopper sets, before the tag:
 *   window.ShopDeskIdentity = {external_id: "u123", name: "张三", hmac: "<hex HMAC-SHA256 of external_id>"}
 * Protocol: /work/shared/contract/chat.md (version 1) and docs/chat-protocol.md.
 * Everything is drawn in a shadow root, so the shop's CSS and ours never meet; every text from the
 * network is set with textContent, never as HTML.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[src*='widget.js'][data-store]");
  if (!script || window.ShopDesk) return;
  var base = new URL(script.src, location.href).origin;
  var wsBase = base.replace(/^http/, "ws");
  var opts = script.dataset;
  var store = opts.store || "main";
  var lang = opts.lang === "en" ? "en" : "zh";
  var T = {
    zh: {title: "在线客服", placeholder: "输入消息，Enter 发送", send: "发送", close: "关闭", open: "联系客服",
         queued: "排队中：前面还有 {n} 位，预计等待 {eta}", assigned: "客服 {name} 为您服务", bot: "智能助手为您服务",
         ended: "会话已结束", offline: "当前没有客服在线，请留言，我们会尽快通过邮件或电话回复您",
         typing: "对方正在输入…", read: "已读", sent: "已发送", sending: "发送中", failed: "发送失败，正在重试",
         connecting: "正在连接…", reconnecting: "网络中断，正在重连…", rate: "请为本次服务评分", rated: "感谢您的评价！",
         comment: "还有什么想说的（选填）", submit: "提交", name: "称呼", phone: "手机号", email: "邮箱",
         prechat: "开始咨询前，请留下您的联系方式", start: "开始咨询", contactSaved: "联系方式已保存",
         product: "咨询商品", order: "咨询订单", sendCard: "发送", image: "图片", emoji: "表情",
         tooBig: "图片不能超过 5 MB", notImage: "只能发送 JPG、PNG 或 WebP 图片", video: "视频通话",
         calling: "正在呼叫客服…", callDeclined: "客服暂时无法接听视频", callEnded: "视频通话已结束", hangup: "挂断",
         newChat: "新的咨询", blocked: "暂时无法使用在线客服", minutes: "{n} 分钟", seconds: "{n} 秒", you: "我", agent: "客服", system: "系统"},
    en: {title: "Chat with us", placeholder: "Type a message, Enter to send", send: "Send", close: "Close",
         open: "Chat", queued: "In queue: {n} ahead of you, about {eta}", assigned: "{name} is helping you",
         bot: "Our assistant is helping you", ended: "The chat has ended",
         offline: "Nobody is online right now. Leave a message and we will reply by email or phone.",
         typing: "typing…", read: "Read", sent: "Sent", sending: "Sending", failed: "Not sent, retrying",
         connecting: "Connecting…", reconnecting: "Connection lost, reconnecting…", rate: "How did we do?",
         rated: "Thank you for your rating!", comment: "Anything else? (optional)", submit: "Submit", name: "Name",
         phone: "Phone", email: "Email", prechat: "Before we start, how can we reach you?", start: "Start chat",
         contactSaved: "Contact details saved", product: "About this product", order: "About this order",
         sendCard: "Send", image: "Image", emoji: "Emoji", tooBig: "Images up to 5 MB",
         notImage: "JPG, PNG or WebP images only", video: "Video call", calling: "Calling an agent…",
         callDeclined: "The agent cannot take a video call now", callEnded: "The video call has ended",
         hangup: "Hang up", newChat: "New chat", blocked: "Chat is not available", minutes: "{n} min", seconds: "{n} s", you: "Me", agent: "Agent",
         system: "System"}
  }[lang];
  var EMOJI = "😀 😂 😊 😍 🤔 😢 😡 👍 👎 🙏 👌 🎉 ❤️ 📦 🚚 💰 ❓ ✅".split(" ");
  var MAX_IMAGE = 5 * 1024 * 1024;
  var KEY = "shopdesk:" + (opts.merchant || "") + ":" + store;

  function fmt(s, vars) { return s.replace(/\{(\w+)\}/g, function (_, k) { return vars[k]; }); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function load(name) { try { return JSON.parse(localStorage.getItem(KEY + ":" + name)); } catch (e) { return null; } }
  function save(name, v) { try { localStorage.setItem(KEY + ":" + name, JSON.stringify(v)); } catch (e) { /* private mode */ } }
  function uid() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function eta(s) { return s >= 60 ? fmt(T.minutes, {n: Math.ceil(s / 60)}) : fmt(T.seconds, {n: Math.max(5, s)}); }

  // ---------------------------------------------------------------- state
  var state = {
    visitorId: load("visitor"), token: null, ws: null, open: false, connected: false, retry: 0,
    conversation: load("conversation"), // {id, status, assignee, queue_position, eta_s}
    lastSeq: 0, seen: {}, pending: load("pending") || {}, ownSeqs: [], contact: load("contact"),
    rated: {}, call: null
  };

  // ---------------------------------------------------------------- view
  var host = el("div");
  host.id = "shopdesk-widget";
  var root = host.attachShadow ? host.attachShadow({mode: "open"}) : host;
  var css = el("style");
  css.textContent = [
    ":host{all:initial}",
    "[hidden]{display:none!important}",
    ".tools svg{width:20px;height:20px;stroke:#4b5563;fill:none;stroke-width:1.8;stroke-linecap:round;stroke-linejoin:round;vertical-align:middle}",
    "*{box-sizing:border-box;font-family:-apple-system,BlinkMacSystemFont,'PingFang SC','Noto Sans CJK SC','Microsoft YaHei',sans-serif}",
    ".bubble{position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;border-radius:28px;padding:0 18px;height:52px;background:#2563eb;color:#fff;font-size:15px;box-shadow:0 6px 20px rgba(0,0,0,.2);cursor:pointer}",
    ".bubble .dot{display:inline-block;min-width:18px;height:18px;border-radius:9px;background:#ef4444;font-size:12px;line-height:18px;margin-left:6px}",
    ".panel{position:fixed;right:20px;bottom:84px;z-index:2147483001;width:360px;height:540px;max-height:calc(100vh - 100px);background:#fff;border-radius:12px;box-shadow:0 12px 40px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden;color:#111827;font-size:14px}",
    ".panel[hidden],.bubble[hidden]{display:none}",
    ".head{background:#2563eb;color:#fff;padding:10px 12px;display:flex;align-items:center;gap:8px;cursor:move;user-select:none;touch-action:none}",
    ".head b{flex:1;font-size:15px}.head button{background:transparent;border:0;color:#fff;font-size:20px;cursor:pointer;line-height:1}",
    ".status{padding:6px 12px;font-size:12px;color:#374151;background:#eff6ff;border-bottom:1px solid #dbeafe;min-height:26px}",
    ".status.offline{background:#fff7ed;color:#9a3412}.status.warn{background:#fef2f2;color:#991b1b}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#f9fafb}",
    ".msg{max-width:80%;display:flex;flex-direction:column;gap:2px}.msg .who{font-size:11px;color:#6b7280}",
    ".msg .body{padding:8px 10px;border-radius:10px;background:#fff;border:1px solid #e5e7eb;white-space:pre-wrap;word-break:break-word}",
    ".msg.me{align-self:flex-end;align-items:flex-end}.msg.me .body{background:#2563eb;color:#fff;border-color:#2563eb}",
    ".msg.system{align-self:center;max-width:95%}.msg.system .body{background:transparent;border:0;color:#6b7280;font-size:12px;padding:0}",
    ".msg img{max-width:200px;max-height:200px;border-radius:8px;display:block}",
    ".msg .tick{font-size:11px;color:#6b7280}.msg .tick.read{color:#2563eb}.msg .tick.failed{color:#dc2626}",
    ".card{border:1px solid #e5e7eb;border-radius:8px;padding:8px;background:#fff;color:#111827;font-size:13px}",
    ".typing{font-size:12px;color:#6b7280;padding:0 12px;height:18px}",
    ".offer{margin:8px 12px 0;display:flex;justify-content:space-between;align-items:center;gap:8px}",
    ".foot{border-top:1px solid #e5e7eb;padding:8px;display:flex;flex-direction:column;gap:6px}",
    ".tools{display:flex;gap:4px}.tools button{border:0;background:transparent;font-size:18px;cursor:pointer;padding:2px 6px;border-radius:6px}.tools button:hover{background:#f3f4f6}",
    ".row{display:flex;gap:6px}textarea{flex:1;resize:none;height:56px;border:1px solid #d1d5db;border-radius:8px;padding:6px 8px;font-size:14px}",
    ".primary{background:#2563eb;color:#fff;border:0;border-radius:8px;padding:0 14px;cursor:pointer;font-size:14px}",
    ".primary:disabled{opacity:.5;cursor:default}",
    ".emoji{display:grid;grid-template-columns:repeat(9,1fr);gap:2px;padding:4px;border:1px solid #e5e7eb;border-radius:8px}",
    ".emoji button{border:0;background:transparent;font-size:18px;cursor:pointer}",
    ".form{display:flex;flex-direction:column;gap:6px;padding:12px}.form input,.form textarea{border:1px solid #d1d5db;border-radius:8px;padding:6px 8px;font-size:14px;width:100%}",
    ".stars{display:flex;gap:4px}.stars button{border:0;background:transparent;font-size:26px;cursor:pointer;color:#d1d5db}.stars button.on{color:#f59e0b}",
    ".video{display:flex;gap:4px;padding:6px;background:#111827}.video video{width:50%;max-height:150px;background:#000;border-radius:6px}",
    "@media (max-width:600px){.panel{right:0;bottom:0;left:0;top:0;width:auto;height:auto;max-height:none;border-radius:0}.bubble{right:12px;bottom:12px}}"
  ].join("\n");
  root.appendChild(css);

  var bubble = el("button", "bubble", T.open);
  bubble.type = "button";
  bubble.setAttribute("data-testid", "chat-open");
  var unreadDot = el("span", "dot");
  unreadDot.hidden = true;
  bubble.appendChild(unreadDot);
  var panel = el("section", "panel");
  panel.hidden = true;
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", opts.title || T.title);
  var head = el("div", "head");
  head.appendChild(el("b", null, opts.title || T.title));
  var closeBtn = el("button", null, "×");
  closeBtn.type = "button";
  closeBtn.title = T.close;
  closeBtn.setAttribute("data-testid", "chat-close");
  head.appendChild(closeBtn);
  var statusLine = el("div", "status", T.connecting);
  statusLine.setAttribute("data-testid", "chat-status");
  var videoBox = el("div", "video");
  videoBox.hidden = true;
  var log = el("div", "log");
  log.setAttribute("data-testid", "chat-log");
  log.setAttribute("aria-live", "polite");
  var typingLine = el("div", "typing");
  typingLine.setAttribute("data-testid", "chat-typing");
  var foot = el("div", "foot");
  var tools = el("div", "tools");
  // Icons are drawn, not emoji: a shopper's device may lack a colour emoji font.
  var ICONS = {
    emoji: "<circle cx='12' cy='12' r='9'/><path d='M8 14s1.5 2 4 2 4-2 4-2'/><path d='M9 9h.01M15 9h.01'/>",
    image: "<rect x='3' y='4' width='18' height='16' rx='2'/><circle cx='9' cy='10' r='2'/><path d='M21 17l-5-5-8 8'/>",
    video: "<rect x='2' y='6' width='14' height='12' rx='2'/><path d='M16 10l6-3v10l-6-3z'/>"
  };
  function iconButton(name, title) {
    var b = el("button");
    b.type = "button";
    b.title = title;
    b.setAttribute("aria-label", title);
    b.innerHTML = "<svg viewBox='0 0 24 24' aria-hidden='true'>" + ICONS[name] + "</svg>"; // constant markup, no data
    return b;
  }
  var emojiBtn = iconButton("emoji", T.emoji);
  var imageBtn = iconButton("image", T.image);
  var videoBtn = iconButton("video", T.video);
  videoBtn.hidden = true;
  videoBtn.setAttribute("data-testid", "chat-video");
  var fileInput = el("input");
  fileInput.type = "file";
  fileInput.accept = "image/jpeg,image/png,image/webp";
  fileInput.hidden = true;
  fileInput.setAttribute("data-testid", "chat-file");
  tools.appendChild(emojiBtn);
  tools.appendChild(imageBtn);
  tools.appendChild(videoBtn);
  tools.appendChild(fileInput);
  var emojiGrid = el("div", "emoji");
  emojiGrid.hidden = true;
  EMOJI.forEach(function (e) {
    var b = el("button", null, e);
    b.type = "button";
    b.addEventListener("click", function () { input.value += e; input.focus(); emojiGrid.hidden = true; });
    emojiGrid.appendChild(b);
  });
  var row = el("div", "row");
  var input = el("textarea");
  input.placeholder = T.placeholder;
  input.maxLength = 5000;
  input.setAttribute("data-testid", "chat-input");
  var sendBtn = el("button", "primary", T.send);
  sendBtn.type = "button";
  sendBtn.setAttribute("data-testid", "chat-send");
  row.appendChild(input);
  row.appendChild(sendBtn);
  foot.appendChild(tools);
  foot.appendChild(emojiGrid);
  foot.appendChild(row);
  [head, statusLine, videoBox, log, typingLine, foot].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(bubble);
  root.appendChild(panel);

  function scrollDown() { log.scrollTop = log.scrollHeight; }
  function showOpen(open) {
    state.open = open;
    panel.hidden = !open;
    bubble.hidden = open && window.matchMedia("(max-width:600px)").matches;
    if (open) {
      unreadDot.hidden = true;
      unreadDot.textContent = "";
      markRead();
      input.focus();
      if (!state.ws) connect();
    }
  }

  // Dragging by the header (mouse and touch), kept inside the window.
  (function () {
    var start = null;
    head.addEventListener("pointerdown", function (ev) {
      if (ev.target !== head && ev.target.tagName !== "B") return;
      var r = panel.getBoundingClientRect();
      start = {x: ev.clientX, y: ev.clientY, left: r.left, top: r.top};
      head.setPointerCapture(ev.pointerId);
    });
    head.addEventListener("pointermove", function (ev) {
      if (!start) return;
      var left = Math.min(Math.max(0, start.left + ev.clientX - start.x), window.innerWidth - panel.offsetWidth);
      var top = Math.min(Math.max(0, start.top + ev.clientY - start.y), window.innerHeight - panel.offsetHeight);
      panel.style.left = left + "px";
      panel.style.top = top + "px";
      panel.style.right = "auto";
      panel.style.bottom = "auto";
    });
    head.addEventListener("pointerup", function () { start = null; });
  })();

  function setStatus(text, cls) {
    statusLine.textContent = text;
    statusLine.className = "status" + (cls ? " " + cls : "");
  }
  function showConversation() {
    var c = state.conversation;
    if (!state.connected) return setStatus(state.retry ? T.reconnecting : T.connecting, state.retry ? "warn" : "");
    if (!c) return setStatus(T.title);
    if (c.status === "queued") setStatus(fmt(T.queued, {n: Math.max(0, (c.queue_position || 1) - 1), eta: eta(c.eta_s || 60)}));
    else if (c.status === "assigned") setStatus(fmt(T.assigned, {name: (c.assignee && c.assignee.name) || T.agent}));
    else if (c.status === "bot") setStatus(T.bot);
    else if (c.status === "offline") setStatus(T.offline, "offline");
    else if (c.status === "ended") setStatus(T.ended);
    statusLine.setAttribute("data-status", c.status);
    videoBtn.hidden = c.status !== "assigned"; // a call needs an agent holding the chat
    if (c.status === "queued") statusLine.setAttribute("data-position", String(c.queue_position || ""));
    else statusLine.removeAttribute("data-position");
    if (c.status === "offline" && !state.contact) showContactForm(true);
    if (c.status === "assigned" || c.status === "bot") {
      var stale = log.querySelector(".form[data-kind=contact]");
      if (stale) stale.remove();
    }
    if (c.status === "ended" && !state.rated[c.id]) showRating(c.id);
  }

  // ---------------------------------------------------------------- messages
  var bySeq = {};
  function who(sender) {
    if (!sender) return "";
    if (sender.type === "visitor") return T.you;
    if (sender.type === "system") return T.system;
    return sender.name || T.agent;
  }
  function renderBody(box, m) {
    if (m.card) {
      var card = el("div", "card");
      card.textContent = (m.card.type === "order" ? T.order : T.product) + " · " + (m.card.title || m.card.sku || m.card.order_no || "");
      box.appendChild(card);
    }
    if (m.attachment) {
      var img = el("img");
      img.alt = T.image;
      fetchImage(m.attachment, img);
      box.appendChild(img);
    }
    if (m.text) box.appendChild(document.createTextNode(m.text));
  }
  function fetchImage(att, img) {
    // Attachments are private to the conversation: fetched with the token, shown from a blob URL.
    fetch(base + (att.url || "/api/v1/chat/uploads/" + att.id), {headers: {authorization: "Bearer " + state.token}})
      .then(function (r) { return r.ok ? r.blob() : null; })
      .then(function (b) { if (b) img.src = URL.createObjectURL(b); });
  }
  function addMessage(m) {
    if (m.seq && state.seen[m.seq]) return;
    var mine = m.sender && m.sender.type === "visitor";
    var node = mine && m.client_msg_id ? log.querySelector("[data-client='" + m.client_msg_id + "']") : null;
    if (!node) {
      node = el("div", "msg " + (mine ? "me" : (m.sender && m.sender.type === "system" ? "system" : "them")));
      node.appendChild(el("span", "who", who(m.sender)));
      var body = el("div", "body");
      renderBody(body, m);
      node.appendChild(body);
      if (mine) node.appendChild(el("span", "tick", T.sent));
      insertInOrder(node, m.seq);
    }
    if (m.seq) {
      state.seen[m.seq] = true;
      node.setAttribute("data-seq", String(m.seq));
      bySeq[m.seq] = node;
      state.lastSeq = Math.max(state.lastSeq, m.seq);
      if (mine) {
        state.ownSeqs.push(m.seq);
        var tick = node.querySelector(".tick");
        if (tick && !tick.classList.contains("read")) { tick.textContent = T.sent; tick.className = "tick"; }
      }
    }
    node.setAttribute("data-testid", "chat-message");
    scrollDown();
    if (!mine && m.sender && m.sender.type !== "system") {
      typingLine.textContent = "";
      if (state.open && document.visibilityState === "visible") markRead();
      else {
        unreadDot.hidden = false;
        unreadDot.textContent = String((parseInt(unreadDot.textContent, 10) || 0) + 1);
      }
    }
  }
  function insertInOrder(node, seq) {
    if (!seq) return log.appendChild(node);
    var items = log.querySelectorAll("[data-seq]");
    for (var i = 0; i < items.length; i++) {
      if (parseInt(items[i].getAttribute("data-seq"), 10) > seq) return log.insertBefore(node, items[i]);
    }
    log.appendChild(node);
  }
  function markRead() {
    var c = state.conversation;
    if (c && state.lastSeq && state.connected) send({type: "read", conversation_id: c.id, seq: state.lastSeq});
  }
  function showSystem(text) {
    var node = el("div", "msg system");
    node.appendChild(el("div", "body", text));
    log.appendChild(node);
    scrollDown();
  }

  // ---------------------------------------------------------------- sending, with resend until acked
  function queueSend(payload) {
    var id = uid();
    var frame = Object.assign({type: "message.send", client_msg_id: id}, payload);
    if (state.conversation && state.conversation.status !== "ended") frame.conversation_id = state.conversation.id;
    state.pending[id] = frame;
    save("pending", state.pending);
    var node = el("div", "msg me");
    node.setAttribute("data-client", id);
    node.setAttribute("data-testid", "chat-message");
    node.appendChild(el("span", "who", T.you));
    var body = el("div", "body");
    renderBody(body, payload.attachment_id ? {attachment: payload._preview} : payload);
    node.appendChild(body);
    node.appendChild(el("span", "tick", T.sending));
    delete frame._preview;
    log.appendChild(node);
    scrollDown();
    send(frame);
  }
  function send(frame) {
    if (state.ws && state.ws.readyState === 1) { state.ws.send(JSON.stringify(frame)); return true; }
    return false;
  }
  sendBtn.addEventListener("click", sendText);
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendText(); }
  });
  var lastTyping = 0;
  input.addEventListener("input", function () {
    var c = state.conversation;
    if (c && Date.now() - lastTyping > 2000) { lastTyping = Date.now(); send({type: "typing", conversation_id: c.id}); }
  });
  function sendText() {
    var text = input.value.trim();
    if (!text) return;
    if (needsPrechat()) return showPrechat();
    input.value = "";
    queueSend({text: text});
  }
  emojiBtn.addEventListener("click", function () { emojiGrid.hidden = !emojiGrid.hidden; });
  imageBtn.addEventListener("click", function () { fileInput.click(); });
  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file) return;
    if (file.size > MAX_IMAGE) return showSystem(T.tooBig);
    if (!/^image\/(jpeg|png|webp)$/.test(file.type)) return showSystem(T.notImage);
    var form = new FormData();
    form.append("file", file);
    // The server checks the bytes too (a renamed text file is refused there, whatever the browser says).
    fetch(base + "/api/v1/chat/uploads", {method: "POST", body: form, headers: {authorization: "Bearer " + state.token}})
      .then(function (r) { return r.json().then(function (b) { return {ok: r.ok, body: b}; }); })
      .then(function (res) {
        if (!res.ok) return showSystem(res.body.detail || T.notImage);
        queueSend({attachment_id: res.body.id, _preview: res.body});
      });
  });

  // ---------------------------------------------------------------- pre-chat, 留言 contact, rating
  var prechatFields = (opts.prechat || "").split(",").map(function (s) { return s.trim(); }).filter(Boolean);
  function needsPrechat() { return prechatFields.length && !state.contact && !window.ShopDeskIdentity; }
  function contactForm(title, fields, button, onDone) {
    var form = el("form", "form");
    form.setAttribute("data-testid", "chat-contact");
    form.appendChild(el("div", null, title));
    var inputs = {};
    fields.forEach(function (f) {
      var i = el("input");
      i.name = f;
      i.placeholder = T[f] || f;
      i.type = f === "email" ? "email" : (f === "phone" ? "tel" : "text");
      inputs[f] = i;
      form.appendChild(i);
    });
    var go = el("button", "primary", button);
    go.type = "submit";
    go.style.height = "34px";
    form.appendChild(go);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var body = {};
      fields.forEach(function (f) { if (inputs[f].value.trim()) body[f] = inputs[f].value.trim(); });
      api("PUT", "/api/v1/widget/contact", body).then(function (res) {
        if (!res.ok) {
          var bad = inputs[res.body.field] || inputs[fields[0]];
          bad.setCustomValidity(res.body.detail || "");
          bad.reportValidity();
          bad.addEventListener("input", function () { bad.setCustomValidity(""); }, {once: true});
          return;
        }
        state.contact = body;
        save("contact", body);
        form.remove();
        onDone();
      });
    });
    return form;
  }
  function showPrechat() {
    if (log.querySelector(".form")) return;
    log.appendChild(contactForm(T.prechat, prechatFields, T.start, function () { sendText(); }));
    scrollDown();
  }
  function showContactForm() {
    if (log.querySelector(".form")) return;
    var form = contactForm(T.offline, ["name", "email", "phone"], T.submit, function () { showSystem(T.contactSaved); });
    form.setAttribute("data-kind", "contact");
    log.appendChild(form);
    scrollDown();
  }
  function showRating(conversationId) {
    if (log.querySelector("[data-testid=chat-rating]")) return;
    var form = el("form", "form");
    form.setAttribute("data-testid", "chat-rating");
    form.appendChild(el("div", null, T.rate));
    var stars = el("div", "stars");
    var score = 0;
    for (var i = 1; i <= 5; i++) {
      (function (n) {
        var b = el("button", null, "★");
        b.type = "button";
        b.setAttribute("aria-label", String(n));
        b.setAttribute("data-score", String(n));
        b.addEventListener("click", function () {
          score = n;
          Array.prototype.forEach.call(stars.children, function (s, k) { s.classList.toggle("on", k < n); });
        });
        stars.appendChild(b);
      })(i);
    }
    form.appendChild(stars);
    var comment = el("textarea");
    comment.placeholder = T.comment;
    comment.maxLength = 1000;
    form.appendChild(comment);
    var go = el("button", "primary", T.submit);
    go.type = "submit";
    go.style.height = "34px";
    form.appendChild(go);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (!score) return;
      api("POST", "/api/v1/conversations/" + conversationId + "/rating", {score: score, comment: comment.value.trim()})
        .then(function (res) {
          if (!res.ok && res.status !== 409) return;
          state.rated[conversationId] = true;
          form.remove();
          showSystem(T.rated);
        });
    });
    log.appendChild(form);
    scrollDown();
  }

  // ---------------------------------------------------------------- product / order card
  if (opts.sku || opts.order) {
    var offer = el("div", "offer card");
    offer.setAttribute("data-testid", "chat-card-offer");
    offer.appendChild(el("span", null, (opts.sku ? T.product + " " + opts.sku : T.order + " " + opts.order)));
    var sendCard = el("button", "primary", T.sendCard);
    sendCard.type = "button";
    sendCard.style.height = "28px";
    sendCard.addEventListener("click", function () {
      queueSend({card: opts.sku ? {type: "product", sku: opts.sku} : {type: "order", order_no: opts.order}});
      offer.remove();
    });
    offer.appendChild(sendCard);
    panel.insertBefore(offer, log);
  }

  // ---------------------------------------------------------------- video (WebRTC, signalling over the socket)
  var ICE = {iceServers: []};
  function startCall() {
    var c = state.conversation;
    if (!c || c.status !== "assigned" || state.call) return;
    state.call = {id: uid(), pc: null};
    send({type: "call.invite", conversation_id: c.id, call_id: state.call.id});
    showSystem(T.calling);
  }
  function endCall(notify, text) {
    var call = state.call;
    if (!call) return;
    state.call = null;
    if (notify && state.conversation) send({type: "call.hangup", conversation_id: state.conversation.id, call_id: call.id});
    if (call.pc) call.pc.close();
    if (call.stream) call.stream.getTracks().forEach(function (t) { t.stop(); });
    videoBox.hidden = true;
    videoBox.textContent = "";
    showSystem(text || T.callEnded);
  }
  function onCallFrame(f) {
    var call = state.call;
    if (!call || f.call_id !== call.id) return;
    if (f.type === "call.declined") return endCall(false, T.callDeclined);
    if (f.type === "call.hangup") return endCall(false);
    if (f.type === "call.accepted") {
      var pc = call.pc = new RTCPeerConnection(ICE);
      pc.onicecandidate = function (ev) {
        if (ev.candidate) send({type: "call.ice", conversation_id: f.conversation_id, call_id: call.id, candidate: ev.candidate.toJSON()});
      };
      var local = el("video"), remote = el("video");
      local.muted = true; local.autoplay = remote.autoplay = true; local.playsInline = remote.playsInline = true;
      local.setAttribute("data-testid", "chat-video-local");
      remote.setAttribute("data-testid", "chat-video-remote");
      pc.ontrack = function (ev) { remote.srcObject = ev.streams[0]; videoBox.setAttribute("data-connected", "1"); };
      pc.onconnectionstatechange = function () { videoBox.setAttribute("data-state", pc.connectionState); };
      videoBox.textContent = "";
      videoBox.appendChild(local);
      videoBox.appendChild(remote);
      var hang = el("button", "primary", T.hangup);
      hang.type = "button";
      hang.addEventListener("click", function () { endCall(true); });
      videoBox.appendChild(hang);
      videoBox.hidden = false;
      navigator.mediaDevices.getUserMedia({video: true, audio: true}).then(function (stream) {
        call.stream = stream;
        local.srcObject = stream;
        stream.getTracks().forEach(function (t) { pc.addTrack(t, stream); });
        return pc.createOffer();
      }).then(function (offer) {
        return pc.setLocalDescription(offer).then(function () {
          send({type: "call.offer", conversation_id: f.conversation_id, call_id: call.id, sdp: offer.sdp});
        });
      }).catch(function () { endCall(true); });
      return;
    }
    if (f.type === "call.answer" && call.pc) return call.pc.setRemoteDescription({type: "answer", sdp: f.sdp});
    if (f.type === "call.ice" && call.pc && f.candidate) return call.pc.addIceCandidate(f.candidate).catch(function () {});
  }
  videoBox.hidden = true;
  videoBtn.addEventListener("click", startCall);

  // ---------------------------------------------------------------- the socket
  function api(method, path, body) {
    return fetch(base + path, {
      method: method, headers: {"content-type": "application/json", authorization: "Bearer " + state.token},
      body: body ? JSON.stringify(body) : undefined
    }).then(function (r) {
      return r.text().then(function (t) { var b = {}; try { b = JSON.parse(t); } catch (e) { /* empty */ } return {ok: r.ok, status: r.status, body: b}; });
    });
  }
  function startSession() {
    var body = {store: store, page: {url: location.href.slice(0, 2000), title: document.title.slice(0, 500)}};
    if (opts.merchant) body.merchant = opts.merchant;
    if (state.visitorId) body.visitor_id = state.visitorId;
    if (window.ShopDeskIdentity) body.identity = window.ShopDeskIdentity;
    if (document.referrer) body.referrer = document.referrer.slice(0, 2000);
    return fetch(base + "/api/v1/widget/sessions", {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)})
      .then(function (r) {
        if (r.status === 403) state.blocked = true; // blocked by the shop: stop trying
        if (!r.ok) throw new Error("session " + r.status);
        return r.json();
      })
      .then(function (s) {
        state.visitorId = s.visitor_id;
        state.token = s.token;
        save("visitor", s.visitor_id);
      });
  }
  function connect() {
    if (state.ws || state.blocked) return;
    var ready = state.token ? Promise.resolve() : startSession();
    ready.then(function () {
      var ws = state.ws = new WebSocket(wsBase + "/ws?v=1&token=" + encodeURIComponent(state.token));
      ws.onmessage = function (ev) { var f; try { f = JSON.parse(ev.data); } catch (e) { return; } onFrame(f); };
      ws.onclose = function (ev) {
        state.ws = null;
        state.connected = false;
        if (ev.code === 4401 || ev.code === 1008) state.token = null; // a new session on the next try
        if (state.blocked) return;
        state.retry += 1;
        showConversation();
        setTimeout(connect, Math.min(30000, 500 * Math.pow(2, Math.min(state.retry, 6))) * (0.5 + Math.random() / 2));
      };
    }).catch(function () {
      if (state.blocked) return setStatus(T.blocked, "warn");
      state.retry += 1;
      state.connected = false;
      showConversation();
      setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, Math.min(state.retry, 5))));
    });
  }
  function onFrame(f) {
    switch (f.type) {
      case "hello":
        state.connected = true;
        state.retry = 0;
        if (f.conversation) applyConversation(f.conversation);
        if (state.conversation && state.conversation.id) {
          send({type: "resume", conversation_id: state.conversation.id, after_seq: state.lastSeq});
        }
        // Anything not acknowledged is sent again with the same client_msg_id: the server never stores it twice.
        Object.keys(state.pending).forEach(function (id) {
          var frame = state.pending[id];
          if (state.conversation && !frame.conversation_id && state.conversation.status !== "ended") frame.conversation_id = state.conversation.id;
          send(frame);
        });
        send({type: "ping"}); // done resuming: the server stops holding live messages for us
        showConversation();
        break;
      case "message.ack":
        delete state.pending[f.client_msg_id];
        save("pending", state.pending);
        if (!state.conversation || state.conversation.id !== f.conversation_id) applyConversation({id: f.conversation_id});
        var node = log.querySelector("[data-client='" + f.client_msg_id + "']");
        if (node) {
          node.setAttribute("data-seq", String(f.seq));
          var tick = node.querySelector(".tick");
          if (tick) { tick.textContent = T.sent; tick.className = "tick"; }
          state.seen[f.seq] = true;
          bySeq[f.seq] = node;
          state.ownSeqs.push(f.seq);
          state.lastSeq = Math.max(state.lastSeq, f.seq);
        }
        break;
      case "message.created":
        if (f.message) {
          if (!state.conversation || state.conversation.id !== f.message.conversation_id) applyConversation({id: f.message.conversation_id});
          addMessage(f.message);
        }
        break;
      case "conversation.updated":
        applyConversation(f.conversation);
        showConversation();
        break;
      case "typing":
        if (f.sender && f.sender.type !== "visitor") {
          typingLine.textContent = T.typing;
          clearTimeout(state.typingTimer);
          state.typingTimer = setTimeout(function () { typingLine.textContent = ""; }, 4000);
        }
        break;
      case "read":
        if (f.reader && f.reader.type !== "visitor") {
          state.ownSeqs.forEach(function (seq) {
            var n = bySeq[seq];
            var tick = n && seq <= f.seq ? n.querySelector(".tick") : null;
            if (tick) { tick.textContent = T.read; tick.className = "tick read"; }
          });
        }
        break;
      case "announcement":
        showSystem(f.text);
        break;
      case "invitation":
        // An agent invites this visitor (proactive chat): open the panel; the agent's message follows.
        if (f.conversation_id) applyConversation({id: f.conversation_id});
        showOpen(true);
        break;
      case "error":
        if (f.code === "blocked") { state.blocked = true; setStatus(f.detail, "warn"); break; }
        if (f.code === "no_agent" && state.call) { endCall(false, T.callDeclined); break; }
        if (f.client_msg_id && state.pending[f.client_msg_id]) {
          delete state.pending[f.client_msg_id];
          save("pending", state.pending);
          var failed = log.querySelector("[data-client='" + f.client_msg_id + "'] .tick");
          if (failed) { failed.textContent = f.detail; failed.className = "tick failed"; }
        } else if (f.code !== "not_found") {
          showSystem(f.detail);
        }
        break;
      default:
        if (f.type && f.type.indexOf("call.") === 0) onCallFrame(f);
    }
  }
  function applyConversation(c) {
    if (!c || !c.id) return;
    var prev = state.conversation;
    if (prev && prev.id !== c.id) {
      // A new conversation after an ended one: its seq starts again at 1.
      state.lastSeq = 0; state.seen = {}; state.ownSeqs = []; bySeq = {};
      log.querySelectorAll("[data-seq]").forEach(function (n) { n.removeAttribute("data-seq"); });
      showSystem(T.newChat);
    }
    state.conversation = Object.assign({}, prev && prev.id === c.id ? prev : {}, c);
    save("conversation", {id: state.conversation.id, status: state.conversation.status});
    if (c.status === "ended" && state.call) endCall(false);
  }

  // Page views: the first one rides on the session; later ones (single-page shops) go over the socket.
  function reportPage() {
    send({type: "page.view", url: location.href.slice(0, 2000), title: document.title.slice(0, 500)});
  }
  ["pushState", "replaceState"].forEach(function (name) {
    var orig = history[name];
    history[name] = function () { var r = orig.apply(this, arguments); setTimeout(reportPage, 0); return r; };
  });
  window.addEventListener("popstate", reportPage);
  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible" && state.open) markRead(); });
  setInterval(function () { send({type: "ping"}); }, 25000);

  bubble.addEventListener("click", function () { showOpen(true); });
  closeBtn.addEventListener("click", function () { showOpen(false); });

  window.ShopDesk = {
    open: function () { showOpen(true); },
    close: function () { showOpen(false); },
    visitorId: function () { return state.visitorId; }
  };
  function mount() {
    document.body.appendChild(host);
    // Connect at once: a returning visitor with an open conversation sees replies without opening the panel,
    // and the shop's agents see who is browsing.
    connect();
    if (opts.open === "1" || (state.conversation && state.conversation.status !== "ended" && load("wasOpen"))) showOpen(true);
  }
  window.addEventListener("beforeunload", function () { save("wasOpen", state.open); });
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
