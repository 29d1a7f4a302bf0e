/* Number formats and board colours, shared by the other dashboard scripts.
   Mirrors apps/dashboard/formatting.py: the server render and live updates agree. */
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("stk-config").textContent);
  const fmt = (digits, sign) => new Intl.NumberFormat("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits, signDisplay: sign ? "always" : "auto",
  });
  const f2 = fmt(2), f2s = fmt(2, true), f1 = fmt(1), f1s = fmt(1, true), f0 = fmt(0);
  const none = (v) => v === null || v === undefined || Number.isNaN(v);

  function priceClass(price, ref, ceiling, floor) {
    if (none(price) || none(ref)) return "";
    if (!none(ceiling) && price >= ceiling) return "c-ceil";
    if (!none(floor) && price <= floor) return "c-floor";
    if (price > ref) return "c-up";
    if (price < ref) return "c-down";
    return "c-ref";
  }

  function signClass(v) {
    if (none(v)) return "";
    return v > 0 ? "c-up" : v < 0 ? "c-down" : "c-ref";
  }

  // `v` in K/M/B with digits(|scaled|) decimals (formatting.py's _scaled).
  function scaled(v, digits) {
    if (none(v)) return "";
    for (const [limit, suffix] of [[1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
      if (Math.abs(v) >= limit) {
        const s = v / limit;
        return s.toFixed(digits(Math.abs(s))) + suffix;
      }
    }
    return String(Math.round(v));
  }

  const compact = (v) => scaled(v, () => 2);
  const short = (v) => scaled(v, (a) => (a < 9.995 ? 2 : a < 99.95 ? 1 : 0));

  function sparklinePath(points, prior, width = 120, height = 32, pad = 2) {
    const pts = (points || []).filter((p) => p && !none(p[0]) && !none(p[1]));
    if (pts.length < 2) return { path: "", priorY: null };
    const times = pts.map((p) => p[0]);
    const values = pts.map((p) => p[1]).concat(none(prior) ? [] : [prior]);
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const lo = Math.min(...values), hi = Math.max(...values);
    const spanT = (t1 - t0) || 1, spanV = (hi - lo) || 1;
    const r1 = (x) => Math.round(x * 10) / 10;
    const y = (v) => r1(pad + (hi - v) / spanV * (height - 2 * pad));
    const path = pts.map((p, i) => (i ? "L" : "M") + r1(pad + (p[0] - t0) / spanT * (width - 2 * pad)) + " " + y(p[1])).join("");
    return { path, priorY: none(prior) ? null : y(prior) };
  }

  const escapeMap = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  window.STK = {
    config,
    priceClass,
    signClass,
    compact,
    short,
    sparklinePath,
    kprice: (v) => (none(v) ? "" : f2.format(v / 1000)),
    signedKprice: (v) => (none(v) ? "" : f2s.format(v / 1000)),
    pct: (v) => (none(v) ? "" : f2s.format(v).replace(/,/g, "") + "%"),
    number: (v) => (none(v) ? "" : f0.format(Math.round(v))),
    points: (v, d = 2) => (none(v) ? "" : (d === 1 ? f1 : f2).format(v)),
    signedPoints: (v, d = 2) => (none(v) ? "" : (d === 1 ? f1s : f2s).format(v)),
    billions: (v, signed) => (none(v) ? "" : (signed ? f2s : f2).format(v / 1e9)),
    escape: (s) => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, (c) => escapeMap[c]),
    /* A short highlight on an element whose value changed. No forced reflow:
       a board changes hundreds of cells a second, and reading layout per cell
       would stall the page; a cell still lit just stays lit a little longer. */
    flash(el, direction) {
      const cls = direction > 0 ? "flash-up" : direction < 0 ? "flash-down" : "flash";
      if (!el.classList.contains(cls)) {
        el.classList.remove("flash", "flash-up", "flash-down");
        el.classList.add(cls);
      }
      clearTimeout(el._flashTimer);
      el._flashTimer = setTimeout(() => el.classList.remove(cls), 700);
    },
    /* Call fn(frame) for every snapshot of one stream. */
    onSnapshot(stream, fn) {
      document.addEventListener("stk:frame", (ev) => {
        const { frame } = ev.detail;
        if (frame.type === "snapshot" && frame.stream === stream && frame.data) fn(frame.data, frame);
      });
    },
  };
})();
