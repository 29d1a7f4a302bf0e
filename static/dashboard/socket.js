/* One WebSocket per stream, authenticated by the session cookie.

   Reconnects with exponential backoff and full jitter. Close codes (DESIGN.md):
   40xx stop and say why; 41xx and 1013 back off; 42xx reconnect now. After
   `poll_after_failures` failed attempts in a row it also polls the snapshot
   endpoint until a socket is welcomed again. Publishes every frame as a
   `stk:frame` event and every state change as `stk:conn` on document. */
(function () {
  "use strict";
  const cfg = window.STK.config;
  const metrics = (window.stkMetrics = { firstFrame: null, firstUpdate: null });
  // Close code -> text, from the server's table of refusal reasons (first row per code).
  const REASONS = {};
  (cfg.refusals || []).forEach((row) => {
    if (!(row.close in REASONS)) REASONS[row.close] = row.message;
  });

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail }));
  }

  class StreamClient {
    constructor(name, urls) {
      this.name = name;
      this.wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + urls.ws;
      this.pollUrl = urls.snapshot;
      this.rendered = { epoch: urls.epoch, seq: urls.seq };
      this.last = { epoch: urls.epoch, seq: urls.seq };
      this.attempt = 0;
      this.failures = 0;
      this.heartbeatS = 30;
      this.stopped = false;
      this.polling = false;
      this.ws = null;
      this.timers = {};
    }

    setState(state, detail) {
      this.state = state;
      emit("stk:conn", { stream: this.name, state, detail: detail || "" });
    }

    connect() {
      if (this.stopped) return;
      if (!this.polling) this.setState("connecting");
      this.welcomed = false;
      this.lastError = null;
      let ws;
      try {
        ws = new WebSocket(this.wsUrl);
      } catch (err) {
        this.closed({ code: 1006 });
        return;
      }
      this.ws = ws;
      ws.addEventListener("message", (ev) => this.received(ev.data, "socket"));
      ws.addEventListener("close", (ev) => { if (this.ws === ws) this.closed(ev); });
    }

    /* A browser cannot see protocol pings: a silent socket counts as dead. */
    watch() {
      clearTimeout(this.timers.watchdog);
      this.timers.watchdog = setTimeout(() => {
        if (this.ws) this.ws.close(3000, "heartbeat timeout");
      }, (this.heartbeatS * 2 + 5) * 1000);
    }

    received(text, via) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (err) {
        return;
      }
      if (via === "socket") this.watch();
      switch (frame.type) {
        case "welcome":
          this.welcomed = true;
          this.attempt = 0;
          this.failures = 0;
          this.heartbeatS = frame.heartbeat_s || this.heartbeatS;
          this.stopPolling();
          this.setState("live");
          break;
        case "snapshot":
          if (frame.epoch === this.last.epoch && frame.seq <= this.last.seq) return; // already shown
          this.last = { epoch: frame.epoch, seq: frame.seq };
          if (via === "socket" && metrics.firstFrame === null) {
            metrics.firstFrame = performance.now();
            performance.mark("stk:first-frame");
          }
          if (metrics.firstUpdate === null && (frame.epoch !== this.rendered.epoch || frame.seq !== this.rendered.seq)) {
            metrics.firstUpdate = performance.now();
            metrics.firstUpdateVia = via;
            performance.mark("stk:first-update");
          }
          break;
        case "error":
          this.lastError = frame;
          break;
        default:
          break;
      }
      emit("stk:frame", { stream: this.name, frame, via });
    }

    closed(ev) {
      clearTimeout(this.timers.watchdog);
      this.ws = null;
      if (this.stopped) return;
      const code = ev.code || 1006;
      if (code >= 4000 && code < 4100) {
        const why = (this.lastError && this.lastError.message) || REASONS[code] || "refused by the server";
        this.stop(why, code);
        return;
      }
      let delay;
      if (code >= 4200 && code < 4300 && this.welcomed) {
        delay = Math.random() * 1000; // server restarting: come back now, spread out
      } else {
        if (!this.welcomed) this.failures += 1;
        const slow = (code >= 4100 && code < 4200) || code === 1013;
        const base = slow ? Math.max(cfg.backoff_base_ms, 2000) : cfg.backoff_base_ms;
        delay = Math.random() * Math.min(cfg.backoff_cap_ms, base * 2 ** this.attempt);
        this.attempt += 1;
      }
      if (this.failures >= cfg.poll_after_failures) this.startPolling();
      if (!this.polling) this.setState("retrying", `retry in ${Math.ceil(delay / 1000)} s (code ${code})`);
      clearTimeout(this.timers.retry);
      this.timers.retry = setTimeout(() => this.connect(), delay);
    }

    startPolling() {
      if (this.polling || this.stopped) return;
      this.polling = true;
      this.setState("polling", `socket failed ${this.failures}×, polling every ${cfg.poll_interval_ms / 1000} s`);
      this.poll();
      this.timers.poll = setInterval(() => this.poll(), cfg.poll_interval_ms);
    }

    stopPolling() {
      clearInterval(this.timers.poll);
      this.polling = false;
    }

    async poll() {
      let res;
      try {
        res = await fetch(this.pollUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
      } catch (err) {
        return; // network down: keep trying
      }
      if (!this.polling) return;
      if (res.ok) {
        this.received(await res.text(), "poll");
      } else if (res.status === 401 || res.status === 403) {
        let body = {};
        try { body = await res.json(); } catch (err) { /* not JSON */ }
        this.stop(body.message || "not allowed", res.status === 401 ? 4001 : 4003);
      }
    }

    stop(why, code) {
      this.stopped = true;
      this.stopPolling();
      Object.values(this.timers).forEach((t) => { clearTimeout(t); clearInterval(t); });
      if (this.ws) this.ws.close(1000);
      this.setState("stopped", why);
      emit("stk:stopped", { stream: this.name, code, reason: why });
    }

    close() {
      this.stopped = true;
      if (this.ws) this.ws.close(1000, "page closed");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const clients = Object.entries(cfg.streams).map(([name, urls]) => new StreamClient(name, urls));
    window.stkClients = clients;
    clients.forEach((c) => c.connect());
    window.addEventListener("pagehide", () => clients.forEach((c) => c.close()));
  });
})();
