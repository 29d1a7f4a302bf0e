/* Foreign-flow panel: VN30 and board totals, net speed, and bars for the top
   net buyers and sellers (values in billions of VND). */
(function () {
  "use strict";
  const STK = window.STK;
  const panel = document.getElementById("foreign");
  if (!panel) return;
  const E = STK.escape;

  function total(label, t) {
    t = t || {};
    return `<tr><th>${label}</th><td>${STK.billions(t.buy_value)}</td><td>${STK.billions(t.sell_value)}</td>
      <td class="${STK.signClass(t.net_value)}">${STK.billions(t.net_value, true)}</td></tr>`;
  }

  function bars(rows, kind, max) {
    return rows.map((r) => {
      const width = Math.round((Math.abs(r.net_value || 0) / max) * 100);
      return `<div class="bar-row"><span class="bar-sym">${E(r.symbol)}</span><span class="bar-track"><span class="bar bar-${kind}" style="width:${width}%"></span></span>
        <span class="bar-val ${kind === "buy" ? "c-up" : "c-down"}">${STK.billions(r.net_value, true)}</span></div>`;
    }).join("");
  }

  STK.onSnapshot("foreign", (data) => {
    if (!data.vn30 && !data.board) return;
    const buyers = (data.top_buyers || []).slice(0, 5);
    const sellers = (data.top_sellers || []).slice(0, 5);
    const max = Math.max(1, ...buyers.concat(sellers).map((r) => Math.abs(r.net_value || 0)));
    const speed = data.speed
      ? `<p class="speed">Net speed <b class="${STK.signClass(data.speed.net_value_per_min)}">${STK.billions(data.speed.net_value_per_min, true)}</b> bn/min</p>`
      : "";
    panel.innerHTML = `<h2>Foreign flow <small>bn VND</small></h2>
      <table class="totals"><thead><tr><th></th><th>Buy</th><th>Sell</th><th>Net</th></tr></thead>
      <tbody>${total("VN30", data.vn30)}${total("Board", data.board)}</tbody></table>${speed}
      <div class="bars"><div class="bar-col"><h3>Top net buyers</h3>${bars(buyers, "buy", max)}</div>
      <div class="bar-col"><h3>Top net sellers</h3>${bars(sellers, "sell", max)}</div></div>`;
  });
})();
