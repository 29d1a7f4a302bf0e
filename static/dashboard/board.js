/* VN30 quotes table and futures panel: update cells in place, colour them by
   the Vietnamese rules, and highlight the cells that changed. */
(function () {
  "use strict";
  const STK = window.STK;
  const table = document.getElementById("quotes");
  const rowTemplate = document.getElementById("stock-row");
  const PRICE = new Set(["ref", "ceiling", "floor", "last", "high", "low"]);
  const LAST_COLOURED = new Set(["symbol", "last", "change", "change_pct"]);
  const COLOURS = ["c-ceil", "c-floor", "c-ref", "c-up", "c-down"];

  function text(field, v) {
    if (field === "symbol") return v || "";
    if (PRICE.has(field)) return STK.kprice(v);
    if (field === "change") return STK.signedKprice(v);
    if (field === "change_pct") return STK.pct(v);
    if (field === "foreign_room") return STK.compact(v);
    return STK.number(v);
  }

  function colour(field, s, lastClass) {
    if (LAST_COLOURED.has(field)) return lastClass;
    if (field === "high" || field === "low") return STK.priceClass(s[field], s.ref, s.ceiling, s.floor);
    return null; // fixed colour (ref/ceiling/floor columns) or none
  }

  function updateRow(tr, s) {
    const lastClass = STK.priceClass(s.last, s.ref, s.ceiling, s.floor);
    for (const td of tr.cells) {
      const field = td.dataset.field;
      const raw = s[field];
      const value = raw === null || raw === undefined ? "" : String(raw);
      const cls = colour(field, s, lastClass);
      if (cls !== null) {
        td.classList.remove(...COLOURS);
        if (cls) td.classList.add(cls);
      }
      if (td.dataset.value !== value) {
        const before = td.dataset.value;
        td.dataset.value = value;
        td.textContent = text(field, raw);
        // Prices flash green/red by direction; other changed cells flash neutral.
        const direction = LAST_COLOURED.has(field) ? Number(value) - Number(before) : 0;
        if (before !== "" && before !== undefined && field !== "symbol") STK.flash(td, direction);
      }
    }
  }

  function applyMarket(data) {
    if (!table) return;
    const tbody = table.tBodies[0];
    const stocks = data.stocks || [];
    const seen = new Set();
    const existing = new Map([...tbody.querySelectorAll("tr[data-symbol]")].map((tr) => [tr.dataset.symbol, tr]));
    if (stocks.length) tbody.querySelectorAll(".empty-row").forEach((tr) => tr.remove());
    for (const s of stocks) {
      let tr = existing.get(s.symbol);
      if (!tr) {
        tr = rowTemplate.content.firstElementChild.cloneNode(true);
        tr.dataset.symbol = s.symbol;
        tbody.appendChild(tr);
      }
      seen.add(s.symbol);
      updateRow(tr, s);
    }
    existing.forEach((tr, symbol) => { if (!seen.has(symbol)) tr.remove(); });
    document.dispatchEvent(new CustomEvent("stk:rows-updated"));
  }

  function applyFutures(f) {
    const panel = document.getElementById("futures");
    if (!panel) return;
    const E = STK.escape;
    if (!f) {
      panel.innerHTML = '<h2>VN30 futures</h2><p class="empty">No futures data yet.</p>';
      return;
    }
    const prev = panel.querySelector("[data-field=last]");
    const before = prev ? Number(prev.dataset.value) : null;
    const cls = STK.priceClass(f.last, f.ref, f.ceiling, f.floor);
    const basisWord = f.basis > 0 ? "premium" : f.basis < 0 ? "discount" : f.basis === 0 ? "flat" : "";
    panel.innerHTML = `<h2>VN30 futures <small data-field="alias">${E(f.alias)}</small></h2>
      <div class="fut-main"><b data-field="symbol">${E(f.symbol)}</b>
      <span class="fut-last ${cls}" data-field="last" data-value="${E(f.last)}">${STK.points(f.last, 1)}</span>
      <span class="${cls}"><span data-field="change">${STK.signedPoints(f.change, 1)}</span> <span data-field="change_pct">${STK.pct(f.change_pct)}</span></span></div>
      <dl class="fut-grid">
      <dt>VN30</dt><dd data-field="vn30">${STK.points(f.vn30)}</dd>
      <dt>Basis</dt><dd data-field="basis" class="${STK.signClass(f.basis)}">${STK.signedPoints(f.basis)} <small>${basisWord}</small></dd>
      <dt>Ref</dt><dd class="c-ref" data-field="ref">${STK.points(f.ref, 1)}</dd>
      <dt>Ceil / Floor</dt><dd><span class="c-ceil" data-field="ceiling">${STK.points(f.ceiling, 1)}</span> / <span class="c-floor" data-field="floor">${STK.points(f.floor, 1)}</span></dd>
      <dt>High / Low</dt><dd><span data-field="high">${STK.points(f.high, 1)}</span> / <span data-field="low">${STK.points(f.low, 1)}</span></dd>
      <dt>Volume</dt><dd data-field="volume">${STK.number(f.volume)}</dd>
      <dt>Expiry</dt><dd data-field="expiry">${E(f.expiry || "–")}</dd></dl>`;
    if (before !== null && !Number.isNaN(before) && before !== f.last) {
      STK.flash(panel.querySelector("[data-field=last]"), f.last - before);
    }
  }

  STK.onSnapshot("market", (data) => {
    applyMarket(data);
    applyFutures(data.futures);
  });
})();
