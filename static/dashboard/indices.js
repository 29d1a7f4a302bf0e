/* Index strip: value, change, breadth and an inline SVG sparkline per index. */
(function () {
  "use strict";
  const STK = window.STK;
  const strip = document.getElementById("indices");
  if (!strip) return;

  function card(ix) {
    const E = STK.escape;
    const cls = STK.signClass(ix.change);
    const spark = STK.sparklinePath(ix.points, ix.prior);
    const prior = spark.priorY === null ? "" : `<line class="spark-prior" x1="0" x2="120" y1="${spark.priorY}" y2="${spark.priorY}"/>`;
    const dash = (v) => (v === null || v === undefined ? "–" : E(v));
    return `<header><b class="ix-code">${E(ix.name || ix.code)}</b>
      <span class="ix-value ${cls}" data-field="value" data-value="${E(ix.value)}">${STK.points(ix.value)}</span></header>
      <div class="ix-change ${cls}"><span data-field="change">${STK.signedPoints(ix.change)}</span> <span data-field="change_pct">${STK.pct(ix.change_pct)}</span></div>
      <svg class="spark ${cls}" viewBox="0 0 120 32" width="120" height="32" aria-hidden="true">${prior}${spark.path ? `<path d="${spark.path}"/>` : ""}</svg>
      <div class="ix-breadth" title="advances / unchanged / declines (ceilings, floors)">
      <span class="c-up">▲${dash(ix.advances)}${ix.ceilings ? ` <small class="c-ceil">(${E(ix.ceilings)})</small>` : ""}</span>
      <span class="c-ref">■${dash(ix.unchanged)}</span>
      <span class="c-down">▼${dash(ix.declines)}${ix.floors ? ` <small class="c-floor">(${E(ix.floors)})</small>` : ""}</span></div>
      <div class="ix-vol">Vol ${STK.compact(ix.volume)} · Val ${STK.billions(ix.value_traded)} bn</div>`;
  }

  STK.onSnapshot("index", (data) => {
    const indices = data.indices || [];
    if (indices.length) strip.querySelectorAll(".empty").forEach((el) => el.remove());
    const seen = new Set();
    indices.forEach((ix, i) => {
      let el = strip.querySelector(`[data-index="${CSS.escape(ix.code)}"]`);
      if (!el) {
        el = document.createElement("article");
        el.className = "index-card";
        el.dataset.index = ix.code;
      }
      if (strip.children[i] !== el) strip.insertBefore(el, strip.children[i] || null);
      seen.add(ix.code);
      const old = el.querySelector("[data-field=value]");
      const before = old ? Number(old.dataset.value || NaN) : NaN;
      el.innerHTML = card(ix);
      if (!Number.isNaN(before) && before !== ix.value) STK.flash(el.querySelector("[data-field=value]"), ix.value - before);
    });
    strip.querySelectorAll("[data-index]").forEach((el) => { if (!seen.has(el.dataset.index)) el.remove(); });
  });
})();
