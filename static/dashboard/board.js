/* VN30 quotes table and futures panel: update cells in place, colour them by
   the Vietnamese rules, and flash every cell whose value changed. */
(function () {
  "use strict";
  const STK = window.STK;
  const table = document.getElementById("quotes");
  const rowTemplate = document.getElementById("stock-row");
  const BOOK = ["bid1", "bid2", "bid3", "ask1", "ask2", "ask3"];
  const PRICE = new Set(["ref", "ceiling", "floor", "last", "high", "low", ...BOOK]);
  const COMPACT = new Set(["active_buy_volume", "active_sell_volume", "foreign_buy_volume", "foreign_sell_volume", "foreign_room"]);
  const LAST_COLOURED = new Set(["symbol", "last", "last_volume", "change", "change_pct"]);
  const DIRECTED = new Set(["last", "change", "change_pct", ...BOOK]); // flash green/red by direction
  const COLOURS = ["c-ceil", "c-floor", "c-ref", "c-up", "c-down"];

  /* The row with its order book spread into cells: bid1..3, bid1_vol.. and ask1..3. */
  function flat(s) {
    const f = Object.assign({}, s);
    for (const side of ["bid", "ask"]) {
      const levels = s[side + "s"] || [];
      for (let n = 1; n <= 3; n++) {
        const level = levels[n - 1] || [null, null];
        f[side + n] = level[0];
        f[side + n + "_vol"] = level[1];
      }
    }
    return f;
  }

  function text(field, v) {
    if (field === "symbol" || field === "session") return v || "";
    if (PRICE.has(field)) return STK.kprice(v);
    if (field === "change") return STK.signedKprice(v);
    if (field === "change_pct") return STK.pct(v);
    if (COMPACT.has(field)) return STK.short(v);
    return STK.number(v);
  }

  function colour(field, s, lastClass) {
    if (LAST_COLOURED.has(field)) return lastClass;
    if (field === "high" || field === "low") return STK.priceClass(s[field], s.ref, s.ceiling, s.floor);
    const level = field.match(/^(bid|ask)\d/);
    if (level) return STK.priceClass(s[level[0]], s.ref, s.ceiling, s.floor);
    return null; // fixed colour (ref/ceiling/floor columns) or none
  }

  /* Equal values: the server writes 2.0 where the browser writes 2. */
  function same(before, value) {
    if (before === value) return true;
    return before !== "" && value !== "" && before !== undefined && Number(before) === Number(value);
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
      if (field === "foreign_room" && td.dataset.total !== String(s.room_total ?? "")) {
        td.dataset.total = String(s.room_total ?? "");
        td.title = s.room_total === null || s.room_total === undefined ? "" : "of " + STK.short(s.room_total);
      }
      if (!same(td.dataset.value, value)) {
        const before = td.dataset.value;
        td.dataset.value = value;
        td.textContent = text(field, raw);
        const direction = DIRECTED.has(field) && before !== "" && value !== "" ? Number(value) - Number(before) : 0;
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
      updateRow(tr, flat(s));
    }
    existing.forEach((tr, symbol) => { if (!seen.has(symbol)) tr.remove(); });
    document.dispatchEvent(new CustomEvent("stk:rows-updated"));
  }

  function applyFutures(future) {
    const panel = document.getElementById("futures");
    if (!panel) return;
    const E = STK.escape;
    if (!future) {
      panel.innerHTML = '<h2>VN30 futures</h2><p class="empty">No futures data yet.</p>';
      return;
    }
    const f = flat(future);
    const before = new Map([...panel.querySelectorAll("[data-field]")].map((el) => [el.dataset.field, el.textContent]));
    const cls = STK.priceClass(f.last, f.ref, f.ceiling, f.floor);
    const lvl = (field) => STK.priceClass(f[field], f.ref, f.ceiling, f.floor);
    const basisWord = f.basis > 0 ? "premium" : f.basis < 0 ? "discount" : f.basis === 0 ? "flat" : "";
    const book = [1, 2, 3].map((n) => `<tr>
      <td data-field="bid${n}_vol" class="${lvl("bid" + n)}">${STK.number(f["bid" + n + "_vol"])}</td>
      <td data-field="bid${n}" class="${lvl("bid" + n)}">${STK.points(f["bid" + n], 1)}</td>
      <td data-field="ask${n}" class="${lvl("ask" + n)}">${STK.points(f["ask" + n], 1)}</td>
      <td data-field="ask${n}_vol" class="${lvl("ask" + n)}">${STK.number(f["ask" + n + "_vol"])}</td></tr>`).join("");
    panel.innerHTML = `<h2>VN30 futures <small data-field="alias">${E(f.alias)}</small></h2>
      <div class="fut-main"><b data-field="symbol">${E(f.symbol)}</b>
      <span class="fut-last ${cls}" data-field="last" data-value="${E(f.last)}">${STK.points(f.last, 1)}</span>
      <span class="${cls}"><span data-field="change">${STK.signedPoints(f.change, 1)}</span> <span data-field="change_pct">${STK.pct(f.change_pct)}</span></span>
      <span class="sess" data-field="session" data-value="${E(f.session)}" title="Derivatives session (ATO from 08:45)">${E(f.session)}</span></div>
      <table class="fut-book" aria-label="Futures order book"><thead><tr><th>Bid vol</th><th>Bid</th><th>Ask</th><th>Ask vol</th></tr></thead><tbody>${book}</tbody></table>
      <dl class="fut-grid">
      <dt>VN30</dt><dd data-field="vn30">${STK.points(f.vn30)}</dd>
      <dt>Basis</dt><dd data-field="basis" class="${STK.signClass(f.basis)}">${STK.signedPoints(f.basis)} <small>${basisWord}</small></dd>
      <dt>Ref</dt><dd class="c-ref" data-field="ref">${STK.points(f.ref, 1)}</dd>
      <dt>Ceil / Floor</dt><dd><span class="c-ceil" data-field="ceiling">${STK.points(f.ceiling, 1)}</span> / <span class="c-floor" data-field="floor">${STK.points(f.floor, 1)}</span></dd>
      <dt>High / Low</dt><dd><span data-field="high">${STK.points(f.high, 1)}</span> / <span data-field="low">${STK.points(f.low, 1)}</span></dd>
      <dt>Last vol</dt><dd data-field="last_volume">${STK.number(f.last_volume)}</dd>
      <dt>Volume</dt><dd data-field="volume">${STK.number(f.volume)}</dd>
      <dt>Active buy / sell</dt><dd><span class="c-up" data-field="active_buy_volume">${STK.number(f.active_buy_volume)}</span> / <span class="c-down" data-field="active_sell_volume">${STK.number(f.active_sell_volume)}</span></dd>
      <dt>Expiry</dt><dd data-field="expiry">${E(f.expiry || "–")}</dd></dl>`;
    // Flash what changed since the last frame (the price by its direction).
    const lastBefore = Number((before.get("last") || "").replace(/,/g, ""));
    for (const el of panel.querySelectorAll("[data-field]")) {
      const old = before.get(el.dataset.field);
      if (old === undefined || old === "" || old === el.textContent) continue;
      STK.flash(el, el.dataset.field === "last" ? f.last - lastBefore : 0);
    }
  }

  STK.onSnapshot("market", (data) => {
    applyMarket(data);
    applyFutures(data.futures);
  });
})();
