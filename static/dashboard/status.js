/* Status bar: market phase, feed state with "updated N s ago", simulated-data
   notice, one connection badge per stream, and why a stream stopped. */
(function () {
  "use strict";
  const STK = window.STK;
  const bar = document.getElementById("status");
  if (!bar) return;
  const $ = (role) => bar.querySelector(`[data-role="${role}"]`);
  const PHASES = { pre_open: "Pre-open", ato: "ATO", continuous: "Continuous", lunch: "Lunch break", atc: "ATC", plo: "PLO", closed: "Closed" };
  let clockOffset = STK.config.server_time_ms - Date.now(); // server clock minus ours
  let publishedMs = STK.config.streams.market.published_ms;

  function setFeed(state, detail) {
    const el = $("feed");
    el.className = "feed feed-" + (state || "unknown");
    el.title = detail || "";
    $("feed-state").textContent = state || "unknown";
  }

  function tick() {
    const el = $("updated");
    if (!publishedMs) return;
    const age = Math.max(0, Math.round((Date.now() + clockOffset - publishedMs) / 1000));
    el.textContent = `updated ${age} s ago`;
    el.classList.toggle("old", age > 30);
  }

  document.addEventListener("stk:frame", (ev) => {
    const { frame } = ev.detail;
    if (frame.server_time_ms) clockOffset = frame.server_time_ms - Date.now();
    if (frame.type === "feed") {
      setFeed(frame.state, frame.detail);
      if (frame.simulated) $("simulated").hidden = false;
    } else if (frame.type === "snapshot") {
      if (frame.simulated) $("simulated").hidden = false;
      if (frame.feed) setFeed(frame.feed);
      publishedMs = Math.max(publishedMs || 0, frame.published_ms || 0);
      tick();
      if (frame.stream === "market" && frame.data) {
        const phase = $("phase");
        const changed = phase.textContent !== (PHASES[frame.data.phase] || frame.data.phase || "–");
        phase.className = "phase phase-" + (frame.data.phase || "unknown");
        phase.textContent = PHASES[frame.data.phase] || frame.data.phase || "–";
        if (changed) STK.flash(phase, 0);
      }
    }
  });

  document.addEventListener("stk:conn", (ev) => {
    const { stream, state, detail } = ev.detail;
    const el = bar.querySelector(`[data-conn="${stream}"]`);
    if (!el) return;
    el.className = "conn conn-" + state;
    el.dataset.state = state;
    el.title = `${stream} stream: ${state}${detail ? " (" + detail + ")" : ""}`;
    el.querySelector("[data-role=conn-state]").textContent = state;
  });

  document.addEventListener("stk:stopped", (ev) => {
    const { stream, code, reason } = ev.detail;
    const el = $("stopped");
    el.hidden = false;
    el.dataset.code = code;
    el.textContent = `Live ${stream} updates stopped: ${reason} (${code}). `;
    if (code === 4001) {
      el.appendChild(document.createTextNode("Your session may have ended: "));
      const link = document.createElement("a");
      link.href = STK.config.login_url;
      link.textContent = "Log in again";
      el.appendChild(link);
    }
  });

  const cfgFeed = STK.config.feed;
  if (cfgFeed) setFeed(cfgFeed.state, cfgFeed.detail);
  tick();
  setInterval(tick, 1000);
})();
