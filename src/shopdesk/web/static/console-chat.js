/* ShopDesk agent console: live chat. Plain JS, no build step.
 *
 * Talks to /ws (../shared/contract/chat.md + docs/chat-protocol.md) and the HTTP API with the staff token
 * the page session hands over in data-token. Every text that comes from the network is set with
 * textContent, never as HTML. Messages are placed by seq; a reconnect resumes every open chat from its
 * last seq; a send is retried with the same client_msg_id until acknowledged (never stored twice).
 */
(function () {
  "use strict";
  var root = document.getElementById("chat-console");
  if (!root) return;
  var token = root.dataset.token;
  var me = JSON.parse(root.dataset.me);
  var S = JSON.parse(root.dataset.strings);
  var wsUrl = location.origin.replace(/^http/, "ws") + "/ws?v=1&token=" + encodeURIComponent(token);
  var EMOJI = "😀 😂 😊 😍 🤔 😢 👍 🙏 👌 🎉 ❤️ 📦 🚚 💰 ✅ 🌹".split(" ");
  var ORDER_STATUS = {paid: "已付款", partially_shipped: "部分发货", shipped: "已发货", signed: "已签收", cancelled: "已取消"};

  function t(key, vars) {
    var s = S[key] || key;
    return vars ? s.replace(/\{(\w+)\}/g, function (_, k) { return vars[k] != null ? vars[k] : ""; }) : s;
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "class") e.className = attrs[k];
      else if (k === "testid") e.setAttribute("data-testid", attrs[k]);
      else if (k === "hidden") e.hidden = !!attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    if (text != null) e.textContent = text;
    return e;
  }
  function button(text, attrs, onClick) {
    var b = el("button", Object.assign({type: "button", class: "btn btn-sm"}, attrs || {}), text);
    if (onClick) b.addEventListener("click", onClick);
    return b;
  }
  function uid() {
    var a = new Uint8Array(12);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function yuan(fen) { return "¥" + (fen / 100).toFixed(2); }
  function clock(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return d.toLocaleString(root.dataset.lang === "en" ? "en-GB" : "zh-CN", {month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"});
  }
  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m >= 60 ? Math.floor(m / 60) + "h" + (m % 60) + "m" : m + ":" + ("0" + s).slice(-2);
  }
  function api(method, path, body, raw) {
    var opts = {method: method, headers: {authorization: "Bearer " + token}};
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) { opts.headers["content-type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(path, opts).then(function (r) {
      if (raw) return r;
      return r.text().then(function (text) {
        var b = {};
        try { b = text ? JSON.parse(text) : {}; } catch (e) { b = {detail: text}; }
        return {ok: r.ok, status: r.status, body: b};
      });
    });
  }
  function flash(text, bad) {
    var box = document.getElementById("flash");
    if (!box) return;
    var n = el("div", {class: "alert " + (bad ? "alert-error" : "alert-ok"), testid: "chat-flash"}, text);
    box.appendChild(n);
    setTimeout(function () { n.remove(); }, 5000);
  }
  function failed(res) { flash((res.body && (res.body.detail || res.body.title)) || t("error"), true); }

  // ------------------------------------------------------------------ state
  var state = {
    ws: null, connected: false, retry: 0, convs: {}, panes: {}, active: null, filter: "mine",
    agents: [], desks: [], canned: null, pending: {}, call: null, rooms: {}
  };

  // ------------------------------------------------------------------ layout
  var bar = el("div", {class: "chat-bar card"});
  var presenceSel = el("select", {testid: "presence", "aria-label": t("presence")});
  ["online", "away", "offline"].forEach(function (s) { presenceSel.appendChild(el("option", {value: s}, t(s))); });
  var capacityIn = el("input", {testid: "capacity", type: "number", min: "1", max: "10", value: "5", "aria-label": t("capacity")});
  var connLine = el("span", {class: "muted small", testid: "chat-connection"}, t("connecting"));
  var presenceLabel = el("label", {class: "inline-field"});
  presenceLabel.appendChild(el("span", null, t("presence")));
  presenceLabel.appendChild(presenceSel);
  var capLabel = el("label", {class: "inline-field"});
  capLabel.appendChild(el("span", null, t("capacity")));
  capLabel.appendChild(capacityIn);
  bar.appendChild(presenceLabel);
  bar.appendChild(capLabel);
  bar.appendChild(connLine);

  var layout = el("div", {class: "chat-layout"});
  var side = el("aside", {class: "chat-side card flush"});
  var tabs = el("nav", {class: "chat-filters"});
  var FILTERS = ["mine", "queued", "offline", "all", "visitors", "history", "team"];
  FILTERS.forEach(function (f) {
    var b = button(t("tab_" + f), {"data-filter": f, testid: "filter-" + f, class: "chip"}, function () { setFilter(f); });
    tabs.appendChild(b);
  });
  var list = el("ul", {class: "chat-list plain", testid: "conv-list"});
  var sidePanel = el("div", {class: "chat-side-panel"});
  side.appendChild(tabs);
  side.appendChild(list);
  side.appendChild(sidePanel);

  var main = el("section", {class: "chat-main"});
  var paneTabs = el("div", {class: "chat-tabs", testid: "chat-tabs"});
  var panes = el("div", {class: "chat-panes"});
  var placeholder = el("div", {class: "card muted chat-placeholder"}, t("pick"));
  main.appendChild(paneTabs);
  main.appendChild(panes);
  panes.appendChild(placeholder);
  layout.appendChild(side);
  layout.appendChild(main);
  root.appendChild(bar);
  root.appendChild(layout);

  // ------------------------------------------------------------------ notifications (hidden tab only)
  var audio = null;
  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      var o = audio.createOscillator(), g = audio.createGain();
      o.type = "sine";
      o.frequency.value = 880;
      g.gain.setValueAtTime(0.15, audio.currentTime);
      g.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.25);
      o.connect(g);
      g.connect(audio.destination);
      o.start();
      o.stop(audio.currentTime + 0.25);
    } catch (e) { /* no audio: the notification still shows */ }
  }
  function notify(title, body, conversationId) {
    if (!document.hidden) return;
    beep();
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    var n = new Notification(title, {body: (body || "").slice(0, 120), tag: "shopdesk-" + (conversationId || "")});
    n.onclick = function () { window.focus(); if (conversationId) openPane(conversationId); n.close(); };
  }
  document.addEventListener("click", function askOnce() {
    if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
    document.removeEventListener("click", askOnce);
  });

  // ------------------------------------------------------------------ presence
  function savePresence() {
    var cap = Math.min(10, Math.max(1, parseInt(capacityIn.value, 10) || 5));
    capacityIn.value = cap;
    api("PUT", "/api/v1/agents/me/presence", {status: presenceSel.value, capacity: cap}).then(function (res) {
      if (!res.ok) return failed(res);
      presenceSel.value = res.body.status;
      capacityIn.value = res.body.capacity;
      presenceSel.setAttribute("data-status", res.body.status);
    });
  }
  presenceSel.addEventListener("change", savePresence);
  capacityIn.addEventListener("change", savePresence);
  function loadAgents() {
    return api("GET", "/api/v1/agents").then(function (res) {
      if (!res.ok) return;
      state.agents = res.body.items;
      var mine = state.agents.filter(function (a) { return a.staff_id === me.id; })[0];
      if (mine && !presenceSel.dataset.touched) {
        presenceSel.value = mine.status;
        capacityIn.value = mine.capacity;
        presenceSel.setAttribute("data-status", mine.status);
      }
      Object.keys(state.panes).forEach(function (id) { fillAgentSelects(state.panes[id]); });
    });
  }
  presenceSel.addEventListener("focus", function () { presenceSel.dataset.touched = "1"; });
  function loadDesks() {
    return api("GET", "/api/v1/chat/desks").then(function (res) { if (res.ok) state.desks = res.body.items; });
  }

  // ------------------------------------------------------------------ conversation list
  function upsertConv(c) {
    if (!c || !c.id) return null;
    var prev = state.convs[c.id] || {};
    var next = Object.assign({}, prev, c);
    if (c.visitor === undefined && prev.visitor) next.visitor = prev.visitor;
    state.convs[c.id] = next;
    return next;
  }
  function visitorName(c) {
    var v = c && c.visitor;
    return (v && (v.name || (v.id ? t("visitor") + " " + v.id.slice(-4) : ""))) || (c && c.visitor_id ? t("visitor") + " " + c.visitor_id.slice(-4) : t("visitor"));
  }
  function fits(c) {
    if (state.filter === "mine") return c.status !== "ended" && ((c.assignee && c.assignee.id === me.id) || state.panes[c.id]);
    if (state.filter === "queued") return c.status === "queued";
    if (state.filter === "offline") return c.status === "offline";
    if (state.filter === "all") return c.status !== "ended";
    return false;
  }
  function setFilter(f) {
    state.filter = f;
    Array.prototype.forEach.call(tabs.children, function (b) { b.classList.toggle("active", b.dataset.filter === f); });
    sidePanel.textContent = "";
    list.hidden = ["visitors", "history", "team"].indexOf(f) >= 0;
    if (f === "visitors") showVisitors();
    else if (f === "history") showHistory();
    else if (f === "team") showTeam();
    renderList();
  }
  function renderList() {
    if (list.hidden) return;
    var items = Object.keys(state.convs).map(function (id) { return state.convs[id]; }).filter(fits);
    var order = {queued: 0, offline: 1, bot: 2, assigned: 3, ended: 4};
    items.sort(function (a, b) {
      return (order[a.status] - order[b.status]) || String(b.last_message_at || b.created_at || "").localeCompare(String(a.last_message_at || a.created_at || ""));
    });
    list.textContent = "";
    if (!items.length) list.appendChild(el("li", {class: "muted small chat-empty"}, t("empty_list")));
    items.forEach(function (c) {
      var li = el("li", {class: "conv-item" + (state.active === c.id ? " active" : ""), testid: "conv-item",
                         "data-conversation-id": c.id, "data-status": c.status, tabindex: "0"});
      var top = el("div", {class: "row-between"});
      top.appendChild(el("b", {class: "conv-name"}, visitorName(c)));
      var unread = el("span", {class: "badge-unread" + (c.unread ? "" : " zero"), testid: "unread"}, String(c.unread || 0));
      top.appendChild(unread);
      li.appendChild(top);
      var meta = el("div", {class: "small muted row-between"});
      var status = el("span", {class: "status-pill s-" + c.status}, t("status." + c.status));
      if (c.status === "queued" && c.queue_position) status.textContent += " · " + t("queue_position", {n: c.queue_position});
      meta.appendChild(status);
      var wait = el("span", {class: "wait", "data-since": c.waiting_since || ""});
      meta.appendChild(wait);
      li.appendChild(meta);
      li.addEventListener("click", function () { openPane(c.id); });
      li.addEventListener("keydown", function (ev) { if (ev.key === "Enter") openPane(c.id); });
      list.appendChild(li);
    });
    tickWaits();
  }
  function tickWaits() {
    var nowMs = Date.now();
    Array.prototype.forEach.call(root.querySelectorAll(".wait[data-since]"), function (n) {
      var since = n.getAttribute("data-since");
      n.textContent = since ? t("waiting", {t: span((nowMs - Date.parse(since)) / 1000)}) : "";
    });
  }
  setInterval(tickWaits, 1000);
  function loadConversations() {
    var queries = ["assignee=me", "status=queued", "status=offline", "status=assigned"];
    return Promise.all(queries.map(function (q) { return api("GET", "/api/v1/conversations?limit=100&" + q); }))
      .then(function (results) {
        results.forEach(function (res) { if (res.ok) res.body.items.forEach(upsertConv); });
        renderList();
        Object.keys(state.convs).forEach(function (id) {
          var c = state.convs[id];
          if (c.status === "assigned" && c.assignee && c.assignee.id === me.id && !state.panes[id]) openPane(id, true);
        });
      });
  }
  function fetchConv(id) {
    return api("GET", "/api/v1/conversations/" + id).then(function (res) {
      if (res.ok) { upsertConv(res.body); renderList(); return state.convs[id]; }
      return null;
    });
  }

  // ------------------------------------------------------------------ a chat pane
  function openPane(id, background) {
    var pane = state.panes[id];
    if (!pane) pane = state.panes[id] = buildPane(id);
    if (!background || !state.active) activate(id);
    renderList();
    return pane;
  }
  function activate(id) {
    state.active = id;
    Object.keys(state.panes).forEach(function (k) {
      var p = state.panes[k];
      p.node.hidden = k !== id;
      p.tab.classList.toggle("active", k === id);
    });
    placeholder.hidden = !!id;
    var pane = state.panes[id];
    if (pane) { markRead(pane); pane.input.focus(); }
    renderList();
  }
  function closePane(id) {
    var pane = state.panes[id];
    if (!pane) return;
    send({type: "unwatch", conversation_id: id});
    pane.node.remove();
    pane.tab.remove();
    delete state.panes[id];
    if (state.active === id) {
      var rest = Object.keys(state.panes);
      state.active = null;
      if (rest.length) activate(rest[rest.length - 1]); else placeholder.hidden = false;
    }
    renderList();
  }

  function buildPane(id) {
    var c = state.convs[id] || {id: id};
    var pane = {id: id, lastSeq: 0, firstSeq: null, bySeq: {}, ownSeqs: [], visitorReadSeq: 0};
    var tab = el("button", {type: "button", class: "chat-tab", "data-conversation-id": id, testid: "chat-tab"});
    var tabName = el("span", null, visitorName(c));
    tab.appendChild(tabName);
    var x = el("span", {class: "x", "aria-label": t("close_tab"), title: t("close_tab")}, "×");
    x.addEventListener("click", function (ev) { ev.stopPropagation(); closePane(id); });
    tab.appendChild(x);
    tab.addEventListener("click", function () { activate(id); });
    paneTabs.appendChild(tab);

    var node = el("div", {class: "chat-pane", testid: "chat-pane", "data-conversation-id": id});
    var chatCol = el("div", {class: "chat-col card flush"});
    // header
    var head = el("div", {class: "chat-head"});
    var title = el("b", null, visitorName(c));
    var status = el("span", {class: "status-pill", testid: "pane-status"});
    var lockInfo = el("span", {class: "small muted", testid: "lock-info"});
    head.appendChild(title);
    head.appendChild(status);
    head.appendChild(lockInfo);
    var actions = el("div", {class: "chat-actions"});
    var transferSel = el("select", {testid: "transfer-agent", "aria-label": t("transfer_to")});
    var transferGo = button(t("transfer"), {testid: "transfer-go"}, function () {
      var v = transferSel.value;
      if (!v) return;
      var body = v.indexOf("desk:") === 0 ? {desk: v.slice(5)} : {agent_id: v.slice(6)};
      api("POST", "/api/v1/conversations/" + id + "/transfer", body).then(function (res) {
        if (!res.ok) return failed(res);
        upsertConv(res.body);
        updatePaneHead(pane);
        renderList();
      });
    });
    var inviteSel = el("select", {testid: "invite-agent", "aria-label": t("invite")});
    var inviteGo = button(t("invite"), {testid: "invite-go"}, function () {
      if (!inviteSel.value) return;
      api("POST", "/api/v1/conversations/" + id + "/participants", {agent_id: inviteSel.value}).then(function (res) {
        if (!res.ok) failed(res);
      });
    });
    var lockBtn = button(t("lock"), {testid: "lock-chat"}, function () {
      var c2 = state.convs[id] || {};
      var path = "/api/v1/conversations/" + id + (c2.locked_by === me.id ? "/unlock" : "/lock");
      api("POST", path).then(function (res) {
        if (!res.ok) return failed(res);
        upsertConv(res.body);
        updatePaneHead(pane);
      });
    });
    var blockBtn = button(t("block"), {testid: "block-visitor", class: "btn btn-sm btn-danger"}, function () {
      if (!window.confirm(t("block_confirm"))) return;
      api("POST", "/api/v1/chat/blocks", {conversation_id: id, ip: true}).then(function (res) { if (!res.ok) failed(res); });
    });
    var endBtn = button(t("end"), {testid: "end-chat", class: "btn btn-sm btn-danger"}, function () {
      api("POST", "/api/v1/conversations/" + id + "/end").then(function (res) {
        if (!res.ok) return failed(res);
        upsertConv(res.body);
        updatePaneHead(pane);
        renderList();
      });
    });
    [transferSel, transferGo, inviteSel, inviteGo, lockBtn, blockBtn, endBtn].forEach(function (n) { actions.appendChild(n); });
    head.appendChild(actions);
    chatCol.appendChild(head);

    // video call
    var callBox = el("div", {class: "call-box", testid: "call-box", hidden: true});
    var callPrompt = el("div", {class: "call-prompt"});
    callPrompt.appendChild(el("span", null, t("call_incoming")));
    var accept = button(t("call_accept"), {testid: "call-accept", class: "btn btn-sm btn-primary"}, function () { acceptCall(pane); });
    var decline = button(t("call_decline"), {testid: "call-decline"}, function () { declineCall(pane); });
    callPrompt.appendChild(accept);
    callPrompt.appendChild(decline);
    var videos = el("div", {class: "call-videos", hidden: true});
    var remote = el("video", {testid: "remote-video", autoplay: "", playsinline: ""});
    var local = el("video", {testid: "local-video", autoplay: "", playsinline: "", muted: ""});
    local.muted = true;
    var hang = button(t("call_hangup"), {testid: "call-hangup", class: "btn btn-sm btn-danger"}, function () { endCall(true); });
    videos.appendChild(remote);
    videos.appendChild(local);
    videos.appendChild(hang);
    callBox.appendChild(callPrompt);
    callBox.appendChild(videos);
    chatCol.appendChild(callBox);

    // history
    var logBox = el("div", {class: "chat-log", testid: "agent-log", "aria-live": "polite"});
    var earlier = button(t("load_earlier"), {class: "linklike small", testid: "load-earlier", hidden: true}, function () { loadEarlier(pane); });
    logBox.appendChild(earlier);
    chatCol.appendChild(logBox);
    var typing = el("div", {class: "chat-typing small muted", testid: "agent-typing"});
    chatCol.appendChild(typing);

    // 留言: reply by email
    var emailBox = el("div", {class: "email-box", hidden: true});
    emailBox.appendChild(el("div", {class: "small"}, t("email_reply")));
    var emailText = el("textarea", {testid: "email-reply", rows: "3", maxlength: "5000"});
    var emailSend = button(t("email_send"), {testid: "email-send", class: "btn btn-sm btn-primary"}, function () {
      var text = emailText.value.trim();
      if (!text) return;
      emailSend.disabled = true;
      api("POST", "/api/v1/conversations/" + id + "/reply-by-email", {text: text, client_msg_id: uid()}).then(function (res) {
        emailSend.disabled = false;
        if (!res.ok) return failed(res);
        emailText.value = "";
        flash(t("email_sent"));
      });
    });
    emailBox.appendChild(emailText);
    emailBox.appendChild(emailSend);
    chatCol.appendChild(emailBox);

    // composer
    var composer = el("div", {class: "composer"});
    var toolsRow = el("div", {class: "composer-tools"});
    var emojiBtn = button("😊", {title: t("emoji"), testid: "agent-emoji", class: "btn btn-sm btn-icon"});
    var fileIn = el("input", {type: "file", accept: "image/jpeg,image/png,image/webp", testid: "agent-file", class: "file-input", "aria-label": t("image")});
    var imageBtn = button("🖼️", {title: t("image"), class: "btn btn-sm btn-icon"}, function () { fileIn.click(); });
    var cardType = el("select", {testid: "card-type", "aria-label": t("send_card")});
    cardType.appendChild(el("option", {value: "product"}, t("card_product")));
    cardType.appendChild(el("option", {value: "order"}, t("card_order")));
    var cardValue = el("input", {testid: "card-value", placeholder: t("sku") + " / " + t("order_no"), size: "12"});
    var cardGo = button(t("send_card"), {testid: "card-send"}, function () {
      var v = cardValue.value.trim();
      if (!v) return;
      sendMessage(pane, {card: cardType.value === "product" ? {type: "product", sku: v} : {type: "order", order_no: v}});
      cardValue.value = "";
    });
    var noteLabel = el("label", {class: "small note-toggle", title: t("note_hint")});
    var noteBox = el("input", {type: "checkbox", testid: "agent-note"});
    noteLabel.appendChild(noteBox);
    noteLabel.appendChild(document.createTextNode(" " + t("note")));
    [emojiBtn, imageBtn, fileIn, cardType, cardValue, cardGo, noteLabel].forEach(function (n) { toolsRow.appendChild(n); });
    var emojiGrid = el("div", {class: "emoji-grid", hidden: true});
    EMOJI.forEach(function (e) {
      emojiGrid.appendChild(button(e, {class: "btn-icon emoji"}, function () {
        input.value += e; input.focus(); emojiGrid.hidden = true;
      }));
    });
    emojiBtn.addEventListener("click", function () { emojiGrid.hidden = !emojiGrid.hidden; });
    var suggest = el("ul", {class: "canned-suggest plain", testid: "canned-suggest", hidden: true});
    var row = el("div", {class: "composer-row"});
    var input = el("textarea", {testid: "agent-input", rows: "3", maxlength: "5000", placeholder: t("placeholder")});
    var sendBtn = button(t("send"), {testid: "agent-send", class: "btn btn-primary"}, function () { sendText(pane); });
    row.appendChild(input);
    row.appendChild(sendBtn);
    composer.appendChild(toolsRow);
    composer.appendChild(emojiGrid);
    composer.appendChild(suggest);
    composer.appendChild(row);
    chatCol.appendChild(composer);

    // customer card
    var cardCol = el("aside", {class: "customer-card card", testid: "customer-card"});

    node.appendChild(chatCol);
    node.appendChild(cardCol);
    panes.appendChild(node);

    Object.assign(pane, {node: node, tab: tab, tabName: tabName, title: title, status: status, lockInfo: lockInfo,
      transferSel: transferSel, inviteSel: inviteSel, lockBtn: lockBtn, log: logBox, earlier: earlier, typing: typing,
      emailBox: emailBox, input: input, note: noteBox, suggest: suggest, card: cardCol, callBox: callBox,
      callPrompt: callPrompt, videos: videos, remote: remote, local: local});

    input.addEventListener("keydown", function (ev) {
      if (!suggest.hidden && (ev.key === "Enter" || ev.key === "Tab") && suggest.firstChild && suggest.firstChild.dataset.text != null) {
        ev.preventDefault();
        insertCanned(pane, suggest.firstChild.dataset.text);
        return;
      }
      if (ev.key === "Escape") suggest.hidden = true;
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendText(pane); }
    });
    var lastTyping = 0;
    input.addEventListener("input", function () {
      showCanned(pane);
      if (Date.now() - lastTyping > 2000 && !noteBox.checked) { lastTyping = Date.now(); send({type: "typing", conversation_id: id}); }
    });
    input.addEventListener("focus", function () { markRead(pane); });
    fileIn.addEventListener("change", function () {
      var file = fileIn.files && fileIn.files[0];
      fileIn.value = "";
      if (!file) return;
      var form = new FormData();
      form.append("file", file);
      api("POST", "/api/v1/chat/uploads", form).then(function (res) {
        if (!res.ok) return failed(res);
        sendMessage(pane, {attachment_id: res.body.id}, res.body);
      });
    });

    fillAgentSelects(pane);
    // Presence events are best effort: a colleague who came online while this console was connecting
    // could be missing from transfer and invite. Opening a conversation reads the colleagues afresh.
    loadAgents();
    updatePaneHead(pane);
    loadHistory(pane);
    loadCard(pane);
    return pane;
  }

  function fillAgentSelects(pane) {
    [pane.transferSel, pane.inviteSel].forEach(function (sel, i) {
      var keep = sel.value;
      sel.textContent = "";
      sel.appendChild(el("option", {value: ""}, i === 0 ? t("transfer_to") : t("invite")));
      state.agents.forEach(function (a) {
        if (a.staff_id === me.id) return;
        var label = a.name + " · " + t(a.status) + (a.status !== "offline" ? " (" + a.load + "/" + a.capacity + ")" : "");
        sel.appendChild(el("option", {value: (i === 0 ? "agent:" : "") + a.staff_id, "data-status": a.status}, label));
      });
      if (i === 0) state.desks.forEach(function (d) { sel.appendChild(el("option", {value: "desk:" + d.id}, t("desk") + " · " + d.name)); });
      sel.value = keep;
    });
  }

  function updatePaneHead(pane) {
    var c = state.convs[pane.id] || {};
    pane.title.textContent = visitorName(c);
    pane.tabName.textContent = visitorName(c);
    pane.status.textContent = t("status." + (c.status || "assigned"));
    pane.status.className = "status-pill s-" + (c.status || "");
    pane.node.setAttribute("data-status", c.status || "");
    pane.emailBox.hidden = c.status !== "offline";
    var lockedBy = c.locked_by;
    pane.lockBtn.textContent = lockedBy === me.id ? t("unlock") : t("lock");
    pane.lockInfo.textContent = lockedBy ? t("locked_by", {name: lockedBy === me.id ? t("you") : agentName(lockedBy)}) : "";
    pane.node.classList.toggle("ended", c.status === "ended");
  }
  function agentName(id) {
    var a = state.agents.filter(function (x) { return x.staff_id === id; })[0];
    return a ? a.name : id.slice(-4);
  }

  // ------------------------------------------------------------------ messages in a pane
  function loadHistory(pane) {
    api("GET", "/api/v1/conversations/" + pane.id + "/messages?before_seq=2147483647&limit=50").then(function (res) {
      if (!res.ok) return failed(res);
      res.body.items.forEach(function (m) { addMessage(pane, m); });
      pane.earlier.hidden = !(pane.firstSeq > 1);
      // Then whatever is newer, and live messages: the socket replays seq > lastSeq once, in order.
      if (state.connected) send({type: "resume", conversation_id: pane.id, after_seq: pane.lastSeq});
      markRead(pane);
    });
  }
  function loadEarlier(pane) {
    if (!pane.firstSeq || pane.firstSeq <= 1) return;
    api("GET", "/api/v1/conversations/" + pane.id + "/messages?before_seq=" + pane.firstSeq + "&limit=50").then(function (res) {
      if (!res.ok) return failed(res);
      res.body.items.forEach(function (m) { addMessage(pane, m, true); });
      pane.earlier.hidden = !(pane.firstSeq > 1);
    });
  }
  function senderLabel(s) {
    if (!s) return "";
    if (s.type === "visitor") return s.name || t("visitor");
    if (s.type === "system") return t("system");
    if (s.type === "agent" && s.id === me.id) return t("you");
    return s.name || s.type;
  }
  function renderBody(box, m, preview) {
    if (m.card) {
      var card = el("div", {class: "msg-card", testid: "msg-card", "data-card-type": m.card.type});
      card.appendChild(el("div", {class: "small muted"}, m.card.type === "order" ? t("card_order") : t("card_product")));
      card.appendChild(el("b", null, m.card.title || m.card.sku || m.card.order_no || ""));
      var line = m.card.type === "order"
        ? (m.card.order_no || "") + (m.card.status ? " · " + (ORDER_STATUS[m.card.status] || m.card.status) : "") + (m.card.paid_total_fen != null ? " · " + yuan(m.card.paid_total_fen) : "")
        : (m.card.sku || "") + (m.card.price_fen != null ? " · " + yuan(m.card.price_fen) : "");
      card.appendChild(el("div", {class: "small"}, line));
      box.appendChild(card);
    }
    var att = m.attachment || preview;
    if (att) {
      var img = el("img", {alt: t("image"), class: "msg-img", testid: "msg-image"});
      api("GET", att.url || "/api/v1/chat/uploads/" + att.id, undefined, true)
        .then(function (r) { return r.ok ? r.blob() : null; })
        .then(function (b) {
          if (!b) return;
          var url = URL.createObjectURL(b);
          img.src = url;
          img.addEventListener("click", function () { window.open(url, "_blank", "noopener"); });
        });
      box.appendChild(img);
    }
    if (m.text) box.appendChild(el("div", {class: "msg-text"}, m.text));
  }
  function addMessage(pane, m, older) {
    if (m.seq && pane.bySeq[m.seq]) {
      var known = pane.bySeq[m.seq];
      if (m.card && !known.hasAttribute("data-card-filled")) fillCard(known, m);
      return known;
    }
    var mine = m.sender && m.sender.type === "agent" && m.sender.id === me.id;
    var node = mine && m.client_msg_id ? pane.log.querySelector("[data-client='" + CSS.escape(m.client_msg_id) + "']") : null;
    if (!node) {
      var kind = m.sender ? m.sender.type : "agent";
      node = el("div", {class: "msg from-" + kind + (mine ? " mine" : "") + (m.private ? " private" : ""), testid: "agent-message"});
      var who = el("div", {class: "msg-who small"});
      who.appendChild(el("span", null, senderLabel(m.sender)));
      if (m.private) who.appendChild(el("span", {class: "note-tag"}, t("note")));
      if (m.via === "email") who.appendChild(el("span", {class: "note-tag"}, "email"));
      who.appendChild(el("span", {class: "muted"}, clock(m.created_at)));
      node.appendChild(who);
      var body = el("div", {class: "msg-body"});
      renderBody(body, m);
      node.appendChild(body);
      if (mine && !m.private) node.appendChild(el("span", {class: "tick small", testid: "tick"}, t("sent")));
      insertInOrder(pane, node, m.seq);
    } else if (m.card) {
      fillCard(node, m);
    }
    if (m.seq) {
      node.setAttribute("data-seq", String(m.seq));
      pane.bySeq[m.seq] = node;
      pane.lastSeq = Math.max(pane.lastSeq, m.seq);
      pane.firstSeq = pane.firstSeq == null ? m.seq : Math.min(pane.firstSeq, m.seq);
      if (mine && !m.private) {
        pane.ownSeqs.push(m.seq);
        var tick = node.querySelector(".tick");
        if (tick) { tick.textContent = m.seq <= pane.visitorReadSeq ? t("read") : t("sent"); tick.classList.toggle("read", m.seq <= pane.visitorReadSeq); }
      }
    }
    if (!older) pane.log.scrollTop = pane.log.scrollHeight;
    return node;
  }
  function fillCard(node, m) {
    // Our own card, as the server filled it in (title, price or status).
    var body = node.querySelector(".msg-body");
    if (!body) return;
    body.textContent = "";
    renderBody(body, {card: m.card, text: m.text});
    node.setAttribute("data-card-filled", "1");
  }
  function insertInOrder(pane, node, seq) {
    if (!seq) return pane.log.appendChild(node);
    var items = pane.log.querySelectorAll("[data-seq]");
    for (var i = 0; i < items.length; i++) {
      if (parseInt(items[i].getAttribute("data-seq"), 10) > seq) return pane.log.insertBefore(node, items[i]);
    }
    pane.log.appendChild(node);
  }
  function markRead(pane) {
    if (!pane || state.active !== pane.id || document.hidden || !pane.lastSeq || !state.connected) return;
    var c = state.convs[pane.id];
    if (c && c.unread) { c.unread = 0; renderList(); }
    if (pane.readSent === pane.lastSeq) return;
    pane.readSent = pane.lastSeq;
    send({type: "read", conversation_id: pane.id, seq: pane.lastSeq});
  }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) markRead(state.panes[state.active]); });

  function sendText(pane) {
    var text = pane.input.value.trim();
    if (!text) return;
    pane.input.value = "";
    pane.suggest.hidden = true;
    var payload = {text: text};
    if (pane.note.checked) payload.private = true;
    sendMessage(pane, payload);
  }
  function sendMessage(pane, payload, preview) {
    var id = uid();
    var frame = Object.assign({type: "message.send", client_msg_id: id, conversation_id: pane.id}, payload);
    state.pending[id] = frame;
    var node = el("div", {class: "msg from-agent mine" + (payload.private ? " private" : ""), testid: "agent-message", "data-client": id});
    var who = el("div", {class: "msg-who small"});
    who.appendChild(el("span", null, t("you")));
    if (payload.private) who.appendChild(el("span", {class: "note-tag"}, t("note")));
    node.appendChild(who);
    var body = el("div", {class: "msg-body"});
    renderBody(body, payload.card ? {card: {type: payload.card.type, title: payload.card.sku || payload.card.order_no}, text: payload.text} : payload, preview);
    node.appendChild(body);
    if (!payload.private) node.appendChild(el("span", {class: "tick small", testid: "tick"}, t("sending")));
    pane.log.appendChild(node);
    pane.log.scrollTop = pane.log.scrollHeight;
    send(frame);
  }
  function onAck(f) {
    var frame = state.pending[f.client_msg_id];
    delete state.pending[f.client_msg_id];
    var pane = state.panes[f.conversation_id];
    if (!pane) return;
    var node = pane.log.querySelector("[data-client='" + CSS.escape(f.client_msg_id) + "']");
    if (!node) return;
    if (pane.bySeq[f.seq] && pane.bySeq[f.seq] !== node) { node.remove(); return; }
    node.setAttribute("data-seq", String(f.seq));
    pane.bySeq[f.seq] = node;
    pane.lastSeq = Math.max(pane.lastSeq, f.seq);
    var tick = node.querySelector(".tick");
    if (tick) tick.textContent = t("sent");
    if (frame && !frame.private) pane.ownSeqs.push(f.seq);
    // An ack can overtake older messages: put it where its seq says.
    node.remove();
    insertInOrder(pane, node, f.seq);
  }
  function onSendError(f) {
    var frame = state.pending[f.ref];
    if (!frame) return false;
    delete state.pending[f.ref];
    var pane = state.panes[frame.conversation_id];
    var tick = pane && pane.log.querySelector("[data-client='" + CSS.escape(f.ref) + "'] .tick");
    if (tick) { tick.textContent = t("failed") + ": " + f.detail; tick.classList.add("failed"); }
    else flash(f.detail, true);
    return true;
  }

  // ------------------------------------------------------------------ canned replies (常用语)
  function loadCanned(pane) {
    return api("GET", "/api/v1/chat/canned?conversation_id=" + pane.id).then(function (res) {
      pane.canned = res.ok ? res.body.items : [];
      return pane.canned;
    });
  }
  function showCanned(pane) {
    var v = pane.input.value;
    if (v.charAt(0) !== "/" || v.indexOf(" ") >= 0 || v.indexOf("\n") >= 0) { pane.suggest.hidden = true; return; }
    var prefix = v.slice(1).toLowerCase();
    (pane.canned ? Promise.resolve(pane.canned) : loadCanned(pane)).then(function (items) {
      var hits = items.filter(function (c) { return c.shortcut.toLowerCase().indexOf(prefix) === 0; }).slice(0, 8);
      pane.suggest.textContent = "";
      hits.forEach(function (c) {
        var li = el("li", {class: "canned-item", testid: "canned-item", "data-text": c.rendered, tabindex: "0"});
        li.appendChild(el("b", null, "/" + c.shortcut));
        li.appendChild(el("span", {class: "small muted"}, " " + c.rendered));
        li.addEventListener("mousedown", function (ev) { ev.preventDefault(); insertCanned(pane, c.rendered); });
        pane.suggest.appendChild(li);
      });
      pane.suggest.hidden = !hits.length;
    });
  }
  function insertCanned(pane, text) {
    pane.input.value = text;
    pane.suggest.hidden = true;
    pane.input.focus();
  }

  // ------------------------------------------------------------------ customer card
  function section(card, title, testid) {
    var s = el("section", {class: "cc-section", testid: testid || null});
    s.appendChild(el("h4", null, title));
    card.appendChild(s);
    return s;
  }
  function kv(box, k, v, testid) {
    var r = el("div", {class: "kv small"});
    r.appendChild(el("span", {class: "muted"}, k));
    r.appendChild(el("span", {testid: testid || null}, v == null || v === "" ? t("unknown") : String(v)));
    box.appendChild(r);
  }
  function loadCard(pane) {
    api("GET", "/api/v1/conversations/" + pane.id + "/customer").then(function (res) {
      if (!res.ok) return;
      var d = res.body, v = d.visitor || {}, card = pane.card;
      card.textContent = "";
      card.appendChild(el("h3", null, t("customer")));
      var who = section(card, (d.customer && d.customer.name) || v.name || t("visitor"));
      var visits = el("div", {class: "small", testid: "visitor-visits"},
                      v.returning ? t("visitor_returning", {n: v.visit_count}) : t("visitor_new"));
      who.appendChild(visits);
      if (v.online) who.appendChild(el("span", {class: "status-pill s-assigned"}, t("online_now")));
      kv(who, t("contact"), [v.phone || (d.customer && d.customer.phone), v.email || (d.customer && d.customer.email)].filter(Boolean).join(" · "));
      kv(who, t("ip"), v.ip, "visitor-ip");
      kv(who, t("location"), v.location);
      var dev = v.device ? [v.device.device, v.device.os, v.device.browser].filter(Boolean).join(" · ") : "";
      kv(who, t("device"), dev, "visitor-device");
      kv(who, t("referrer"), v.referrer);
      kv(who, t("landing"), v.landing_page);
      var pagesSec = section(card, t("pages"));
      pane.pagesList = el("ol", {class: "pages plain small", testid: "pages-browsed"});
      (v.pages || []).forEach(function (p) { pane.pagesList.appendChild(pageItem(p)); });
      pagesSec.appendChild(pane.pagesList);
      var ordersSec = section(card, t("orders"), "cc-orders");
      (d.orders || []).forEach(function (o) {
        var li = el("div", {class: "cc-row small", "data-order-no": o.order_no});
        li.appendChild(el("span", {class: "mono"}, o.order_no));
        li.appendChild(el("span", null, (ORDER_STATUS[o.status] || o.status) + " · " + yuan(o.paid_total_fen)));
        li.appendChild(button(t("send_card"), {class: "linklike small"}, function () { sendMessage(pane, {card: {type: "order", order_no: o.order_no}}); }));
        // The application form, filled in by the agent for this shopper; the chat hears the case number.
        var link = el("a", {href: "/console/orders/" + encodeURIComponent(o.id) + "/apply?conversation_id=" + encodeURIComponent(pane.id), target: "_blank", class: "small", testid: "open-case"}, t("open_case"));
        li.appendChild(link);
        ordersSec.appendChild(li);
      });
      if (!(d.orders || []).length) ordersSec.appendChild(el("div", {class: "muted small"}, t("none")));
      var casesSec = section(card, t("cases"), "cc-cases");
      (d.cases || []).forEach(function (c) {
        var a = el("a", {href: "/console/cases/" + c.id, target: "_blank", class: "cc-row small"});
        a.appendChild(el("span", {class: "mono"}, c.case_no));
        a.appendChild(el("span", null, c.status));
        casesSec.appendChild(a);
      });
      if (!(d.cases || []).length) casesSec.appendChild(el("div", {class: "muted small"}, t("none")));
      var pastSec = section(card, t("past"), "cc-past");
      (d.conversations || []).forEach(function (c) {
        var r = el("div", {class: "cc-row small"});
        r.appendChild(el("span", null, clock(c.created_at)));
        r.appendChild(el("span", null, t("status." + c.status) + (c.assignee ? " · " + c.assignee.name : "")));
        r.appendChild(button(t("open"), {class: "linklike small"}, function () { upsertConv(c); openPane(c.id); }));
        pastSec.appendChild(r);
      });
      if (!(d.conversations || []).length) pastSec.appendChild(el("div", {class: "muted small"}, t("none")));
      var c0 = state.convs[pane.id];
      if (c0 && !c0.visitor) { c0.visitor = v; updatePaneHead(pane); renderList(); }
    });
  }
  function pageItem(p) {
    var li = el("li", {class: "page-item"});
    li.appendChild(el("span", {class: "muted"}, clock(p.at)));
    li.appendChild(el("span", {title: p.url}, " " + (p.title || p.url)));
    return li;
  }

  // ------------------------------------------------------------------ video (WebRTC answerer)
  function onCallFrame(f) {
    var pane = state.panes[f.conversation_id];
    if (f.type === "call.invite") {
      pane = openPane(f.conversation_id);
      if (state.call && state.call.id !== f.call_id) { send({type: "call.declined", conversation_id: f.conversation_id, call_id: f.call_id}); return; }
      state.call = {id: f.call_id, conversationId: f.conversation_id, pc: null, ice: []};
      pane.callBox.hidden = false;
      pane.callPrompt.hidden = false;
      pane.videos.hidden = true;
      notify(t("call_incoming"), visitorName(state.convs[f.conversation_id]), f.conversation_id);
      return;
    }
    var call = state.call;
    if (!call || call.id !== f.call_id) return;
    if (f.type === "call.hangup") return endCall(false);
    if (f.type === "call.offer") return answerOffer(f.sdp);
    if (f.type === "call.ice" && f.candidate) {
      if (call.pc && call.pc.remoteDescription) call.pc.addIceCandidate(f.candidate).catch(function () {});
      else call.ice.push(f.candidate);
    }
  }
  function acceptCall(pane) {
    var call = state.call;
    if (!call) return;
    pane.callPrompt.hidden = true;
    pane.videos.hidden = false;
    send({type: "call.accepted", conversation_id: call.conversationId, call_id: call.id});
  }
  function declineCall(pane) {
    var call = state.call;
    if (!call) return;
    send({type: "call.declined", conversation_id: call.conversationId, call_id: call.id});
    state.call = null;
    pane.callBox.hidden = true;
  }
  function answerOffer(sdp) {
    var call = state.call;
    var pane = state.panes[call.conversationId];
    var pc = call.pc = new RTCPeerConnection({iceServers: []});
    pc.onicecandidate = function (ev) {
      if (ev.candidate) send({type: "call.ice", conversation_id: call.conversationId, call_id: call.id, candidate: ev.candidate.toJSON()});
    };
    pc.ontrack = function (ev) {
      pane.remote.srcObject = ev.streams[0];
      pane.remote.setAttribute("data-connected", "1");
    };
    pc.onconnectionstatechange = function () { pane.videos.setAttribute("data-state", pc.connectionState); };
    var media = navigator.mediaDevices && navigator.mediaDevices.getUserMedia
      ? navigator.mediaDevices.getUserMedia({video: true, audio: true}).catch(function () { return null; })
      : Promise.resolve(null);
    media.then(function (stream) {
      if (stream) {
        call.stream = stream;
        pane.local.srcObject = stream;
        stream.getTracks().forEach(function (tr) { pc.addTrack(tr, stream); });
      }
      return pc.setRemoteDescription({type: "offer", sdp: sdp});
    }).then(function () {
      call.ice.forEach(function (c) { pc.addIceCandidate(c).catch(function () {}); });
      call.ice = [];
      return pc.createAnswer();
    }).then(function (answer) {
      return pc.setLocalDescription(answer).then(function () {
        send({type: "call.answer", conversation_id: call.conversationId, call_id: call.id, sdp: answer.sdp});
      });
    }).catch(function () { endCall(true); });
  }
  function endCall(notifyOther) {
    var call = state.call;
    if (!call) return;
    state.call = null;
    if (notifyOther) send({type: "call.hangup", conversation_id: call.conversationId, call_id: call.id});
    if (call.pc) call.pc.close();
    if (call.stream) call.stream.getTracks().forEach(function (tr) { tr.stop(); });
    var pane = state.panes[call.conversationId];
    if (pane) {
      pane.callBox.hidden = true;
      pane.remote.srcObject = null;
      pane.remote.removeAttribute("data-connected");
      flash(t("call_ended"));
    }
  }

  // ------------------------------------------------------------------ side panels: visitors, history, team
  function showVisitors() {
    var box = el("div", {class: "side-box", testid: "visitors-online"});
    box.appendChild(el("h4", null, t("visitors_online")));
    var ul = el("ul", {class: "plain small"});
    box.appendChild(ul);
    sidePanel.appendChild(box);
    function refresh() {
      if (state.filter !== "visitors") return;
      api("GET", "/api/v1/chat/visitors/online").then(function (res) {
        if (!res.ok) return;
        ul.textContent = "";
        if (!res.body.items.length) ul.appendChild(el("li", {class: "muted"}, t("empty_list")));
        res.body.items.forEach(function (v) {
          var li = el("li", {class: "visitor-item", testid: "visitor-item", "data-visitor-id": v.id});
          li.appendChild(el("b", null, v.name || t("visitor") + " " + v.id.slice(-4)));
          var page = (v.pages && v.pages[0]) || {};
          li.appendChild(el("div", {class: "muted", title: page.url || ""}, page.title || page.url || ""));
          if (v.conversation_id) {
            li.appendChild(button(t("status.assigned"), {class: "linklike small"}, function () { openPane(v.conversation_id); }));
          } else {
            li.appendChild(button(t("invite_visitor"), {class: "btn btn-sm", testid: "invite-visitor"}, function () {
              api("POST", "/api/v1/chat/visitors/" + v.id + "/invite", {text: t("invite_text")}).then(function (r) {
                if (!r.ok) return failed(r);
                upsertConv(r.body.conversation);
                openPane(r.body.conversation.id);
              });
            }));
          }
          ul.appendChild(li);
        });
      });
    }
    refresh();
    var timer = setInterval(function () { if (state.filter !== "visitors") clearInterval(timer); else refresh(); }, 10000);
  }

  function showHistory() {
    var box = el("div", {class: "side-box", testid: "history"});
    var form = el("form", {class: "history-form"});
    var q = el("input", {name: "q", placeholder: t("search_q"), testid: "history-q"});
    var customer = el("input", {name: "customer", placeholder: t("search_customer")});
    var orderNo = el("input", {name: "order_no", placeholder: t("order_no")});
    var from = el("input", {name: "date_from", type: "date", "aria-label": t("date_from")});
    var to = el("input", {name: "date_to", type: "date", "aria-label": t("date_to")});
    var go = el("button", {type: "submit", class: "btn btn-sm btn-primary", testid: "history-search"}, t("search"));
    [q, customer, orderNo, from, to, go].forEach(function (n) { form.appendChild(n); });
    var out = el("ul", {class: "plain small", testid: "history-results"});
    var tools = el("div", {class: "btn-row"});
    function params() {
      var p = new URLSearchParams();
      [q, customer, orderNo, from, to].forEach(function (i) { if (i.value.trim()) p.set(i.name, i.value.trim()); });
      return p;
    }
    function download(format) {
      var p = params();
      p.set("format", format);
      api("GET", "/api/v1/conversations/export?" + p.toString(), undefined, true).then(function (r) {
        if (!r.ok) return r.json().then(function (b) { failed({body: b}); });
        return r.blob().then(function (b) {
          var a = el("a", {href: URL.createObjectURL(b), download: "conversations." + format});
          document.body.appendChild(a);
          a.click();
          a.remove();
        });
      });
    }
    tools.appendChild(button(t("export_json"), {testid: "export-json"}, function () { download("json"); }));
    tools.appendChild(button(t("export_csv"), {testid: "export-csv"}, function () { download("csv"); }));
    var importIn = el("input", {type: "file", accept: "application/json", testid: "import-file", class: "file-input"});
    tools.appendChild(button(t("import"), {testid: "import"}, function () { importIn.click(); }));
    tools.appendChild(importIn);
    importIn.addEventListener("change", function () {
      var file = importIn.files && importIn.files[0];
      importIn.value = "";
      if (!file) return;
      file.text().then(function (text) {
        var data;
        try { data = JSON.parse(text); } catch (e) { return flash(t("error"), true); }
        api("POST", "/api/v1/conversations/import", data).then(function (res) {
          if (!res.ok) return failed(res);
          flash(t("imported", {n: res.body.imported}));
        });
      });
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      api("GET", "/api/v1/conversations/search?" + params().toString()).then(function (res) {
        if (!res.ok) return failed(res);
        out.textContent = "";
        if (!res.body.items.length) out.appendChild(el("li", {class: "muted"}, t("empty_list")));
        res.body.items.forEach(function (c) {
          upsertConv(c);
          var li = el("li", {class: "history-item", testid: "history-item", "data-conversation-id": c.id});
          li.appendChild(el("b", null, visitorName(c)));
          li.appendChild(el("span", {class: "muted"}, " " + clock(c.created_at) + " · " + t("status." + c.status)));
          li.addEventListener("click", function () { openPane(c.id); });
          if (me.role === "admin") {
            li.appendChild(button(t("delete"), {class: "linklike small danger", testid: "history-delete"}, function (ev) {
              ev.stopPropagation();
              if (!window.confirm(t("delete_confirm"))) return;
              api("DELETE", "/api/v1/conversations/" + c.id).then(function (r) {
                if (!r.ok) return failed(r);
                li.remove();
                delete state.convs[c.id];
                closePane(c.id);
              });
            }));
          }
          out.appendChild(li);
        });
      });
    });
    box.appendChild(form);
    box.appendChild(tools);
    box.appendChild(out);
    sidePanel.appendChild(box);
  }

  function showTeam() {
    var box = el("div", {class: "side-box", testid: "team"});
    var rooms = el("div", {class: "chip-row"});
    var log = el("div", {class: "chat-log team-log", testid: "team-log"});
    var row = el("div", {class: "composer-row"});
    var input = el("textarea", {rows: "2", testid: "team-input", maxlength: "5000"});
    var go = button(t("send"), {class: "btn btn-primary btn-sm", testid: "team-send"});
    row.appendChild(input);
    row.appendChild(go);
    box.appendChild(rooms);
    box.appendChild(log);
    box.appendChild(row);
    sidePanel.appendChild(box);
    state.teamView = {log: log, room: null};
    function pick(room) {
      state.teamView.room = room.id;
      Array.prototype.forEach.call(rooms.children, function (b) { b.classList.toggle("active", b.dataset.room === room.id); });
      log.textContent = "";
      var r = state.rooms[room.id] = state.rooms[room.id] || {lastSeq: 0, bySeq: {}};
      r.bySeq = {};
      r.lastSeq = 0;
      send({type: "room.resume", room_id: room.id, after_seq: 0});
    }
    function go2() {
      var text = input.value.trim();
      if (!text || !state.teamView.room) return;
      input.value = "";
      send({type: "room.send", room_id: state.teamView.room, client_msg_id: uid(), text: text});
    }
    go.addEventListener("click", go2);
    input.addEventListener("keydown", function (ev) { if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); go2(); } });
    api("GET", "/api/v1/chat/rooms").then(function (res) {
      if (!res.ok) return;
      res.body.items.forEach(function (room) {
        var label = room.key === "staff" ? t("team_room") : t("dm") + " · " + room.title;
        var b = button(label, {class: "chip", "data-room": room.id, testid: "room"}, function () { pick(room); });
        rooms.appendChild(b);
      });
      state.agents.forEach(function (a) {
        if (a.staff_id === me.id || res.body.items.some(function (r) { return r.member_ids.indexOf(a.staff_id) >= 0; })) return;
        rooms.appendChild(button(t("dm") + " · " + a.name, {class: "chip", testid: "room-new"}, function () {
          api("POST", "/api/v1/chat/rooms", {agent_id: a.staff_id}).then(function (r) { if (r.ok) pick(r.body); else failed(r); });
        }));
      });
      if (res.body.items.length) pick(res.body.items[0]);
    });
  }
  function onRoomMessage(m) {
    var r = state.rooms[m.room_id] = state.rooms[m.room_id] || {lastSeq: 0, bySeq: {}};
    if (r.bySeq[m.seq]) return;
    r.lastSeq = Math.max(r.lastSeq, m.seq);
    var view = state.teamView;
    if (!view || view.room !== m.room_id || !document.body.contains(view.log)) {
      if (m.sender && m.sender.id !== me.id) notify(t("tab_team"), m.text, null);
      return;
    }
    var node = el("div", {class: "msg from-agent" + (m.sender.id === me.id ? " mine" : ""), testid: "team-message", "data-seq": String(m.seq)});
    var who = el("div", {class: "msg-who small"});
    who.appendChild(el("span", null, m.sender.id === me.id ? t("you") : m.sender.name));
    who.appendChild(el("span", {class: "muted"}, clock(m.created_at)));
    node.appendChild(who);
    node.appendChild(el("div", {class: "msg-body"}, m.text));
    r.bySeq[m.seq] = node;
    var items = view.log.querySelectorAll("[data-seq]");
    for (var i = 0; i < items.length; i++) {
      if (parseInt(items[i].getAttribute("data-seq"), 10) > m.seq) { view.log.insertBefore(node, items[i]); return; }
    }
    view.log.appendChild(node);
    view.log.scrollTop = view.log.scrollHeight;
  }

  // ------------------------------------------------------------------ the socket
  function send(frame) {
    if (state.ws && state.ws.readyState === 1) { state.ws.send(JSON.stringify(frame)); return true; }
    return false;
  }
  function connect() {
    var ws = state.ws = new WebSocket(wsUrl);
    ws.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      onFrame(f);
    };
    ws.onclose = function (ev) {
      state.ws = null;
      state.connected = false;
      connLine.textContent = t("reconnecting");
      connLine.className = "small warn";
      if (ev.code === 1008) return; // refused: the page session has ended; a reload goes to the login page
      state.retry += 1;
      setTimeout(connect, Math.min(15000, 500 * Math.pow(2, Math.min(state.retry, 5))) * (0.5 + Math.random() / 2));
    };
  }
  function onFrame(f) {
    var pane, c;
    switch (f.type) {
      case "hello":
        state.connected = true;
        state.retry = 0;
        connLine.textContent = t("connected");
        connLine.className = "small muted";
        root.setAttribute("data-connected", "1");
        Object.keys(state.panes).forEach(function (id) { send({type: "resume", conversation_id: id, after_seq: state.panes[id].lastSeq}); });
        // Anything not acknowledged goes again with the same client_msg_id: the server never stores it twice.
        Object.keys(state.pending).forEach(function (id) { send(state.pending[id]); });
        if (state.teamView && state.teamView.room) send({type: "room.resume", room_id: state.teamView.room, after_seq: (state.rooms[state.teamView.room] || {}).lastSeq || 0});
        send({type: "ping"}); // done resuming: the server stops holding live messages for us
        // Presence events are best effort and the socket was not listening before this hello: read the
        // colleagues again, or one who came online meanwhile is missing from transfer and invite.
        loadAgents();
        break;
      case "message.ack":
        onAck(f);
        break;
      case "message.created":
        var m = f.message;
        pane = state.panes[m.conversation_id];
        c = state.convs[m.conversation_id];
        if (!c) fetchConv(m.conversation_id);
        if (c) { c.last_message_at = m.created_at; c.last_seq = Math.max(c.last_seq || 0, m.seq); }
        var fromVisitor = m.sender && m.sender.type === "visitor";
        if (pane) {
          addMessage(pane, m);
          if (fromVisitor) pane.typing.textContent = "";
          if (state.active === pane.id && !document.hidden) markRead(pane);
          else if (fromVisitor && c) c.unread = (c.unread || 0) + 1;
        } else if (fromVisitor && c) {
          c.unread = (c.unread || 0) + 1;
        }
        if (fromVisitor) {
          if (c) c.waiting_since = c.waiting_since || m.created_at;
          notify(t("notify_message") + " · " + visitorName(c), m.text || (m.card ? m.card.title : t("image")), m.conversation_id);
        } else if (m.sender && m.sender.type === "agent" && c && !m.private) {
          c.waiting_since = null;
        }
        renderList();
        break;
      case "conversation.updated":
        var before = state.convs[f.conversation.id];
        c = upsertConv(f.conversation);
        if (!c.visitor) fetchConv(c.id);
        var mineNow = c.assignee && c.assignee.id === me.id && c.status === "assigned";
        var wasMine = before && before.assignee && before.assignee.id === me.id && before.status === "assigned";
        if (mineNow && !wasMine) {
          openPane(c.id, true);
          notify(t("notify_new"), visitorName(c), c.id);
        } else if (!before && (c.status === "queued" || c.status === "offline")) {
          notify(t("notify_new"), visitorName(c), c.id);
        }
        pane = state.panes[c.id];
        if (pane) {
          updatePaneHead(pane);
          if (c.status === "ended" && state.call && state.call.conversationId === c.id) endCall(false);
        }
        renderList();
        break;
      case "typing":
        pane = state.panes[f.conversation_id];
        if (pane && f.sender && f.sender.type === "visitor") {
          pane.typing.textContent = t("typing");
          clearTimeout(pane.typingTimer);
          pane.typingTimer = setTimeout(function () { pane.typing.textContent = ""; }, 4000);
        }
        break;
      case "read":
        pane = state.panes[f.conversation_id];
        if (pane && f.reader && f.reader.type === "visitor") {
          pane.visitorReadSeq = Math.max(pane.visitorReadSeq, f.seq);
          pane.ownSeqs.forEach(function (seq) {
            var n = pane.bySeq[seq];
            var tick = n && seq <= f.seq ? n.querySelector(".tick") : null;
            if (tick) { tick.textContent = t("read"); tick.classList.add("read"); }
          });
        }
        break;
      case "visitor.page":
        pane = state.panes[f.conversation_id];
        if (pane && pane.pagesList) pane.pagesList.insertBefore(pageItem(f), pane.pagesList.firstChild);
        break;
      case "agent.updated":
        var i = state.agents.findIndex(function (a) { return a.staff_id === f.agent.staff_id; });
        if (i >= 0) state.agents[i] = Object.assign({}, state.agents[i], f.agent); else state.agents.push(f.agent);
        if (f.agent.staff_id === me.id) {
          presenceSel.value = f.agent.status;
          capacityIn.value = f.agent.capacity;
          presenceSel.setAttribute("data-status", f.agent.status);
        }
        Object.keys(state.panes).forEach(function (id) { fillAgentSelects(state.panes[id]); });
        break;
      case "mention":
        flash(t("mentioned", {name: f.by.name}));
        notify(t("mentioned", {name: f.by.name}), f.text, f.conversation_id);
        fetchConv(f.conversation_id).then(function () { openPane(f.conversation_id, true); });
        break;
      case "participant.added":
        if (f.staff_id === me.id) fetchConv(f.conversation_id).then(function () { openPane(f.conversation_id, true); });
        break;
      case "room.message":
        onRoomMessage(f.message);
        break;
      case "phone.card":
        // The caller's card (来电弹屏) is drawn by console-phone.js.
        document.dispatchEvent(new CustomEvent("shopdesk:phone-card", {detail: f}));
        notify(root.dataset.lang === "en" ? "Incoming call" : "来电", (f.customer && f.customer.name) || f.call.caller, null);
        break;
      case "error":
        if (f.ref && onSendError(f)) break;
        flash(f.detail, true);
        break;
      default:
        if (f.type && f.type.indexOf("call.") === 0) onCallFrame(f);
    }
  }

  setFilter("mine");
  Promise.all([loadAgents(), loadDesks()]).then(loadConversations).then(connect, connect);
})();
