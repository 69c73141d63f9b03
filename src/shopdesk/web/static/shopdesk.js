// ShopDesk page behaviour: small Alpine components. Loaded before Alpine so they register in time.
document.addEventListener("alpine:init", () => {
  // A live countdown to an ISO instant; labels come from the server in the page language.
  Alpine.data("countdown", (deadline, labels) => ({
    text: "",
    overdue: false,
    timer: null,
    init() {
      this.tick();
      this.timer = setInterval(() => this.tick(), 1000);
    },
    destroy() {
      clearInterval(this.timer);
    },
    tick() {
      let seconds = Math.floor((Date.parse(deadline) - Date.now()) / 1000);
      if (isNaN(seconds)) return;
      if (seconds <= 0) {
        this.overdue = true;
        this.text = labels.overdue;
        return;
      }
      const days = Math.floor(seconds / 86400); seconds -= days * 86400;
      const hours = Math.floor(seconds / 3600); seconds -= hours * 3600;
      const minutes = Math.floor(seconds / 60); seconds -= minutes * 60;
      const parts = [];
      if (days) parts.push(days + labels.d);
      parts.push(hours + labels.h, minutes + labels.m, seconds + labels.s);
      this.text = labels.left.replace("{time}", parts.join(" "));
    },
  }));

  // Typed deductions on approval; the net refund updates as the agent types (integer fen, no floats kept).
  Alpine.data("deductions", (grossFen) => ({
    rows: [],
    seq: 0,
    add() {
      this.rows.push({ key: ++this.seq, type: "gift_not_returned", amount: "", note: "" });
    },
    toFen(text) {
      const match = String(text || "").trim().match(/^(\d+)(?:\.(\d{1,2}))?$/);
      if (!match) return 0;
      return parseInt(match[1], 10) * 100 + parseInt((match[2] || "0").padEnd(2, "0"), 10);
    },
    net() {
      const fen = Math.max(grossFen - this.rows.reduce((sum, r) => sum + this.toFen(r.amount), 0), 0);
      return "¥" + (fen / 100).toFixed(2).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    },
  }));
});

// htmx error fragments land in #flash; bring them into view, and clear old ones on the next request.
document.addEventListener("htmx:beforeRequest", (event) => {
  const flash = document.getElementById("flash");
  if (flash && !(event.detail.elt && event.detail.elt.id === "quote")) flash.innerHTML = "";
});
document.addEventListener("htmx:afterSwap", (event) => {
  if (event.detail.target && event.detail.target.id === "flash") {
    event.detail.target.scrollIntoView({ behavior: "smooth", block: "center" });
  }
});
