/* ShopDesk agent console: the caller's card (来电弹屏). Plain JS, no build step.
 *
 * console-chat.js hands every `phone.card` frame of the staff socket over as a "shopdesk:phone-card" DOM
 * event (docs/phone-and-wechat.md). The card shows the caller: name, masked phone, recent orders, open
 * after-sales cases and tickets (linked to /console/tickets/{id}), and a button that opens the call's ticket
 * (POST /api/v1/calls/{id}/ticket: the caller's open phone ticket, or a new one). Network text is set with
 * textContent, never as HTML.
 */
(function () {
  "use strict";
  var root = document.getElementById("chat-console");
  if (!root) return;
  var token = root.dataset.token;
  var en = root.dataset.lang === "en";
  var T = en ? {
    title: "Incoming call", unknown: "Unknown caller", orders: "Recent orders", cases: "Open after-sales cases",
    tickets: "Open tickets", none: "None", ticket: "Open / create ticket", linked: "Ticket", close: "Close",
    failed: "Could not open the ticket"
  } : {
    title: "来电", unknown: "未知来电", orders: "最近订单", cases: "进行中的售后", tickets: "未结工单", none: "无",
    ticket: "打开/创建工单", linked: "工单", close: "关闭", failed: "工单打开失败"
  };
  var STATUS = {paid: "已付款", partially_shipped: "部分发货", shipped: "已发货", signed: "已签收", cancelled: "已取消"};

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "class") e.className = attrs[k];
      else if (k === "testid") e.setAttribute("data-testid", attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    if (text != null) e.textContent = text;
    return e;
  }
  function ticketLink(ticket) {
    return el("a", {href: "/console/tickets/" + encodeURIComponent(ticket.id), target: "_blank", rel: "noopener"},
      ticket.number + " · " + ticket.subject);
  }
  function section(title, items, line) {
    var box = el("div", {class: "phone-card-section"});
    box.appendChild(el("div", {class: "small muted"}, title));
    var ul = el("ul", {class: "plain small"});
    if (!items || !items.length) ul.appendChild(el("li", {class: "muted"}, T.none));
    (items || []).forEach(function (it) {
      var item = line(it), li = el("li");
      if (typeof item === "string") li.textContent = item; else li.appendChild(item);
      ul.appendChild(li);
    });
    box.appendChild(ul);
    return box;
  }

  var stack = el("div", {class: "phone-cards", testid: "phone-cards", "aria-live": "polite"});
  stack.style.cssText = "position:fixed;right:16px;bottom:16px;z-index:50;display:flex;flex-direction:column;" +
    "gap:8px;max-width:360px;max-height:80vh;overflow:auto";
  document.body.appendChild(stack);

  function show(f) {
    var call = f.call || {};
    var old = stack.querySelector('[data-call="' + CSS.escape(call.id || "") + '"]');
    if (old) old.remove();
    var card = el("div", {class: "card phone-card", testid: "phone-card", "data-call": call.id || ""});
    var head = el("div", {class: "btn-row"});
    head.appendChild(el("strong", null, T.title + " · " + (call.caller || "")));
    var close = el("button", {type: "button", class: "btn btn-small", "aria-label": T.close}, "×");
    close.addEventListener("click", function () { card.remove(); });
    head.appendChild(close);
    card.appendChild(head);
    var c = f.customer;
    card.appendChild(el("div", {testid: "phone-card-customer"},
      c ? (c.name || c.external_id) + " · " + (c.phone || call.caller || "") : T.unknown));
    if (c) {
      card.appendChild(section(T.orders, f.orders, function (o) {
        return o.order_no + " · " + (STATUS[o.status] || o.status) + " · ¥" + (o.paid_total_fen / 100).toFixed(2);
      }));
      card.appendChild(section(T.cases, f.cases, function (x) { return x.case_no + " · " + x.status; }));
      card.appendChild(section(T.tickets, f.tickets, ticketLink));
    }
    var result = el("div", {class: "small", testid: "phone-card-ticket"});
    var open = el("button", {type: "button", class: "btn btn-small btn-primary", testid: "phone-card-open"}, T.ticket);
    open.addEventListener("click", function () {
      open.disabled = true;
      fetch("/api/v1/calls/" + encodeURIComponent(call.id) + "/ticket", {
        method: "POST", headers: {authorization: "Bearer " + token}
      }).then(function (r) { return r.json().then(function (b) { return {ok: r.ok, body: b}; }); })
        .then(function (res) {
          open.disabled = false;
          result.textContent = "";
          if (!res.ok) { result.textContent = res.body.detail || T.failed; return; }
          result.appendChild(document.createTextNode(T.linked + " "));
          result.appendChild(ticketLink(res.body.ticket));
        }, function () { open.disabled = false; result.textContent = T.failed; });
    });
    card.appendChild(open);
    card.appendChild(result);
    stack.insertBefore(card, stack.firstChild);
  }

  document.addEventListener("shopdesk:phone-card", function (ev) { show(ev.detail || {}); });
})();
