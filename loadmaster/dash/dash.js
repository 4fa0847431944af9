// The live dashboard of a loadmaster run: reads snapshots (version 1) from the
// Server-Sent Events stream /api/events and draws them. No framework, no build step;
// every piece of data goes into the DOM through textContent, never as HTML.
// In the open model (the snapshot's `open` is set) it also shows the schedule and what
// it got: a target line, late and dropped calls, service time and schedule lag.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  // ---- formatting; every helper accepts null / undefined and shows a dash ----
  const DASH = "–";
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const fixed = (v, d) => (isNum(v) ? v.toFixed(d) : DASH);
  const int = (v) => (isNum(v) ? String(Math.round(v)) : DASH);
  const ms = (v) => fixed(v, 2);

  function bytes(n) {
    if (!isNum(n)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  // Seconds: "12.3 s" below 100 s, then "h:mm:ss" / "m:ss".
  function duration(s) {
    if (!isNum(s)) return DASH;
    if (s < 100) return (Number.isInteger(s) ? String(s) : s.toFixed(1)) + " s";
    const t = Math.round(s), h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, x = t % 60;
    const two = (k) => String(k).padStart(2, "0");
    return h > 0 ? h + ":" + two(m) + ":" + two(x) : m + ":" + two(x);
  }

  function statuses(obj) {
    if (!obj || typeof obj !== "object") return "";
    return Object.keys(obj).sort().map((k) => k + ": " + obj[k]).join(", ");
  }

  // A config value: scalars as they are, objects and lists as compact JSON.
  function configValue(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // Replaces a <tbody>'s rows: `cells` maps a row to a list of [text, className?].
  function fillRows(tbody, rows, cells, rowClass) {
    const frag = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      const cls = rowClass ? rowClass(row) : "";
      if (cls) tr.className = cls;
      for (const [text, className] of cells(row)) {
        const td = document.createElement("td");
        td.textContent = text;
        if (className) td.className = className;
        tr.appendChild(td);
      }
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  // Tables are rebuilt only when their data changed: keeps a text selection alive
  // and the page cheap once the run settles.
  const lastJson = {};
  function changed(key, value) {
    const json = JSON.stringify(value === undefined ? null : value);
    if (lastJson[key] === json) return false;
    lastJson[key] = json;
    return true;
  }

  // ---- the series: kept here, extended by each event ----
  const KEYS = ["t", "ok", "fail", "clients", "p50_ms", "p90_ms", "p99_ms",
                // the open model's (absent, so null, in the closed model)
                "started", "late", "dropped", "service_p99_ms", "lag_p99_ms", "target"];
  let series = emptySeries();

  function emptySeries() {
    const s = {};
    for (const k of KEYS) s[k] = [];
    return s;
  }

  // Each event holds the seconds not yet sent on this connection; the first one on a
  // (re)connection holds all of them, so a first t not past ours means "start over".
  function mergeSeries(incoming) {
    if (!incoming || !Array.isArray(incoming.t) || incoming.t.length === 0) return false;
    const n = incoming.t.length;
    const col = (k, i) => {
      const a = incoming[k];
      return Array.isArray(a) && i < a.length && isNum(a[i]) ? a[i] : null;
    };
    const have = series.t.length;
    const reset = have > 0 && incoming.t[0] <= series.t[have - 1];
    if (reset) series = emptySeries();
    const last = series.t.length ? series.t[series.t.length - 1] : -Infinity;
    let added = false;
    for (let i = 0; i < n; i++) {
      const t = incoming.t[i];
      if (!isNum(t) || t <= last) continue;
      for (const k of KEYS) series[k].push(k === "t" ? t : col(k, i));
      added = true;
    }
    return added || reset;
  }

  // ---- charts (uPlot), created on the first data ----
  const CHART_HEIGHT = 200;
  const valueFmt = (d) => (u, v) => (v == null ? DASH : v.toFixed(d));
  const line = (label, stroke, digits, extra) =>
    Object.assign({ label, stroke, width: 1.5, value: valueFmt(digits) }, extra || {});
  const LATENCY = { el: "chart-latency",
    data: () => [series.t, series.p50_ms, series.p90_ms, series.p99_ms],
    series: [line("p50", "#2e8b3e", 2), line("p90", "#e08a00", 2), line("p99", "#d0312d", 2)] };
  const CLIENTS = { el: "chart-clients", data: () => [series.t, series.clients],
    series: [line("clients", "#2f6fb3", 0)] };

  // The charts of a run: chosen once, with its first series (a run's model never changes).
  function chartsFor(open) {
    if (!open) {
      return [
        { el: "chart-rate", data: () => [series.t, series.ok, series.fail],
          series: [line("ok/s", "#2e8b3e", 0), line("fail/s", "#d0312d", 0)] },
        CLIENTS, LATENCY,
      ];
    }
    return [
      // the schedule's target each second (with stages it ramps)
      { el: "chart-rate",
        data: () => [series.t, series.target, series.ok, series.fail,
                     series.late, series.dropped],
        series: [line("target/s", "#8a93a3", 1, { dash: [6, 4] }),
                 line("ok/s", "#2e8b3e", 0), line("fail/s", "#d0312d", 0),
                 // dashed: when every call is late it lies on ok/s and fail/s
                 line("late/s", "#e08a00", 0, { dash: [3, 3] }),
                 line("dropped/s", "#7b3fa0", 0)] },
      CLIENTS, LATENCY,
      { el: "chart-open",
        data: () => [series.t, series.p99_ms, series.service_p99_ms, series.lag_p99_ms],
        series: [line("response time p99", "#d0312d", 2), line("service p99", "#2f6fb3", 2),
                 line("lag p99", "#e08a00", 2)] },
    ];
  }
  let charts = null;  // made on the first data, when the model is known
  let openModel = null;  // the latest snapshot's `open`

  // whole seconds only on the x axis
  const X_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];

  function chartWidth(el) {
    return Math.max(200, el.clientWidth || 0);
  }

  function drawCharts() {
    if (series.t.length === 0 || typeof uPlot === "undefined") return;
    if (charts === null) charts = chartsFor(openModel);
    for (const c of charts) {
      if (c.plot) { c.plot.setData(c.data()); continue; }
      const el = $(c.el);
      const opts = {
        width: chartWidth(el),
        height: CHART_HEIGHT,
        // x: seconds of the run, not dates; y: from 0 (all-null data gives [0, 1])
        scales: { x: { time: false },
                  y: { range: (u, min, max) => [0, isNum(max) && max > 0 ? max * 1.05 : 1] } },
        cursor: { sync: { key: "loadmaster" } }, // one cursor over every chart
        series: [{ label: "s", value: valueFmt(0) }].concat(c.series),
        axes: [{ incrs: X_STEPS }, { size: 56 }],
      };
      c.plot = new uPlot(opts, c.data(), el);
    }
  }

  let resizePending = false;
  window.addEventListener("resize", () => {
    if (resizePending) return;
    resizePending = true;
    requestAnimationFrame(() => {
      resizePending = false;
      for (const c of charts || []) {
        if (c.plot) c.plot.setSize({ width: chartWidth($(c.el)), height: CHART_HEIGHT });
      }
    });
  });

  // ---- the page from a snapshot ----
  const PHASES = ["waiting", "preparing", "running", "stopping", "finished"];
  let phase = null;
  let stopBusy = false;   // a stop request is on its way
  let stopAccepted = false;  // the master said it is stopping

  function render(s) {
    phase = typeof s.phase === "string" ? s.phase : null;
    const known = PHASES.includes(phase) ? phase : "unknown";
    setText("phase", phase || DASH);
    $("phase").className = "badge phase-" + known;
    setText("run-id", s.run_id ? String(s.run_id) : DASH);
    setText("status", s.status ? String(s.status) : "");
    document.title = "loadmaster · " + (phase || "…");
    updateStopButton();

    // time: "12.3 s / 60 s, 47.7 s left"; progress bar elapsed / run_time
    let time = isNum(s.elapsed_s) ? duration(s.elapsed_s) : "not started";
    if (isNum(s.run_time_s)) time += " / " + duration(s.run_time_s);
    if (isNum(s.remaining_s)) time += ", " + duration(s.remaining_s) + " left";
    setText("time", time);
    const frac = isNum(s.elapsed_s) && isNum(s.run_time_s) && s.run_time_s > 0
      ? Math.min(1, Math.max(0, s.elapsed_s / s.run_time_s)) : 0;
    $("progress").style.width = (frac * 100).toFixed(1) + "%";

    setText("users", int(s.users));
    setText("users-planned", isNum(s.users_planned) && s.users_planned !== s.users
      ? " of " + s.users_planned + " planned" : "");

    // headline figures
    setText("ok", int(s.ok));
    setText("fail", int(s.fail));
    const total = (isNum(s.ok) ? s.ok : 0) + (isNum(s.fail) ? s.fail : 0);
    setText("accuracy", total > 0 ? (100 * s.ok / total).toFixed(2) + " %" : DASH);
    setText("rps", fixed(s.rps, 1));
    setText("current-rps", fixed(s.current_rps, 1));
    setText("rate-window", isNum(s.rate_window) ? "(last " + s.rate_window + " s)" : "");
    const recent = s.recent_ms || {};
    setText("p50", ms(recent.p50));
    setText("p90", ms(recent.p90));
    setText("p99", ms(recent.p99));
    renderOpen(s.open && typeof s.open === "object" ? s.open : null, s.rate_window);

    if (mergeSeries(s.series)) drawCharts();

    renderFinal(s.final);
    renderThresholds(Array.isArray(s.thresholds) ? s.thresholds : [], phase === "finished");
    renderNames(Array.isArray(s.names) ? s.names : []);
    renderErrors(Array.isArray(s.errors) ? s.errors : []);
    renderAgents(Array.isArray(s.agents) ? s.agents : [], s.missed_deltas);
    renderConfig(s.config);
  }

  // A count that should be zero: coloured when it is not.
  function setCount(id, n, cls) {
    setText(id, int(n));
    $(id).classList.toggle(cls, isNum(n) && n > 0);
  }

  function renderOpen(open, rateWindow) {
    openModel = open;
    $("open").hidden = !open;
    $("box-open").hidden = !open;
    $("charts").classList.toggle("open-model", !!open);
    setText("title-rate", open ? "calls per second, against the target" : "calls per second");
    setText("title-latency", open ? "response time from the intended start, ms" : "latency, ms");
    if (!open) return;
    // "100/s", "1.667/s"; as the config says it ("100 per 60 s") on hover
    setText("open-target", isNum(open.target_rps)
      ? String(Number(open.target_rps.toPrecision(4))) + "/s" : DASH);
    $("open-target").title = open.rate_text ? String(open.rate_text) : "";
    setText("open-arrivals", open.arrivals ? ", " + String(open.arrivals) : "");
    setText("open-started", fixed(open.started_rps, 1));
    setCount("open-late", open.late, "warn");
    setCount("open-dropped", open.dropped, "bad");
    setText("open-late-after", isNum(open.late_after_ms) ? String(open.late_after_ms) : DASH);
    const recent = open.recent && typeof open.recent === "object" ? open.recent : {};
    for (const el of document.querySelectorAll("#open .open-window")) {
      const text = isNum(rateWindow) && rateWindow > 0
        ? "(last " + rateWindow + " s)" : "(recent)";
      if (el.textContent !== text) el.textContent = text;
    }
    setText("open-started-recent", fixed(recent.started_rps, 1));
    setText("open-recent-late-dropped", int(recent.late) + " / " + int(recent.dropped));
    setText("open-service-p99", ms((recent.service_ms || {}).p99));
    setText("open-lag-p99", ms((recent.lag_ms || {}).p99));
  }

  function renderFinal(f) {
    if (!changed("final", f)) return;
    $("final").hidden = !f;
    if (!f) return;
    const exit = $("final-exit");
    exit.textContent = isNum(f.exit_code) ? String(f.exit_code) : DASH;
    exit.className = "exit " + (f.exit_code === 0 ? "good" : "bad");
    $("final-incomplete").hidden = !f.incomplete;
    const notes = Array.isArray(f.notes) ? f.notes : [];
    fillList($("final-notes"), notes);
    $("final-text").textContent = f.text ? String(f.text) : "";
  }

  function fillList(ul, items) {
    ul.replaceChildren(...items.map((t) => {
      const li = document.createElement("li");
      li.textContent = String(t);
      return li;
    }));
  }

  function renderNames(names) {
    if (!changed("names", names)) return;
    // status and bytes columns only when some name has them (the built-in HTTP client)
    const hasStatus = names.some((n) => n && n.statuses && Object.keys(n.statuses).length > 0);
    const hasBytes = names.some((n) => n && (n.bytes_sent > 0 || n.bytes_received > 0));
    // late, dropped, service and lag only in the open model
    const hasOpen = names.some((n) => n && n.open && typeof n.open === "object");
    const table = $("names-table");
    table.classList.toggle("hide-status", !hasStatus);
    table.classList.toggle("hide-bytes", !hasBytes);
    table.classList.toggle("hide-open", !hasOpen);
    table.hidden = names.length === 0;
    $("no-names").hidden = names.length > 0;
    fillRows($("names"), names, (n) => [
      [String(n.name)], [int(n.ok), "num"], [int(n.fail), "num"], [fixed(n.rps, 1), "num"],
      [ms(n.avg_ms), "num"], [ms(n.min_ms), "num"], [ms(n.max_ms), "num"],
      [ms(n.p50_ms), "num"], [ms(n.p90_ms), "num"], [ms(n.p99_ms), "num"],
      ...openCells(n.open && typeof n.open === "object" ? n.open : {}),
      [statuses(n.statuses), "col-status"],
      [bytes(n.bytes_sent), "num col-bytes"], [bytes(n.bytes_received), "num col-bytes"],
    ], (n) => (n.fail > 0 ? "has-fail" : ""));
  }

  function openCells(o) {
    const flag = (n, cls) => "num col-open" + (isNum(n) && n > 0 ? " " + cls : "");
    return [[int(o.late), flag(o.late, "warn")], [int(o.dropped), flag(o.dropped, "bad")],
            [ms(o.service_p99_ms), "num col-open"], [ms(o.lag_p99_ms), "num col-open"]];
  }

  // The rules of thresholds: live (a verdict once a figure exists), then the end's.
  function renderThresholds(rows, final) {
    if (!changed("thresholds", [rows, final])) return;
    $("thresholds-section").hidden = rows.length === 0;
    const failing = rows.filter((r) => r && r.state === "fail").length;
    const passing = rows.filter((r) => r && r.state === "pass").length;
    const summary = $("thresholds-summary");
    summary.textContent = passing + (final ? " passed, " : " passing, ") + failing
      + (final ? " failed" : " failing") + (final && failing ? " (exit 6)" : "");
    summary.className = "mark " + (failing ? "bad" : passing === rows.length ? "good" : "");
    const word = { pass: final ? "pass" : "passing", fail: final ? "FAIL" : "failing" };
    fillRows($("thresholds"), rows, (r) => [
      [word[r.state] || "waiting", r.state === "fail" ? "mark bad"
        : r.state === "pass" ? "mark good" : "empty"],
      [String(r.rule)], [String(r.name)], [String(r.measured), "num"],
      [r.abort_on_fail ? "abort_on_fail" : "", "empty"],
    ], (r) => "threshold-" + (r.state === "pass" || r.state === "fail" ? r.state : "waiting"));
  }

  function renderErrors(errors) {
    if (!changed("errors", errors)) return;
    $("errors-table").hidden = errors.length === 0;
    $("no-errors").hidden = errors.length > 0;
    fillRows($("errors"), errors, (e) => [
      [String(e.name)], [String(e.type)], [String(e.message), "msg"], [int(e.count), "num"],
    ]);
  }

  function renderAgents(agents, missed) {
    if (changed("missed", missed)) {
      $("missed").hidden = !(isNum(missed) && missed > 0);
      $("missed").textContent = isNum(missed) ? missed + " deltas missed" : "";
    }
    if (!changed("agents", agents)) return;
    $("agents-table").hidden = agents.length === 0;
    $("no-agents").hidden = agents.length > 0;
    fillRows($("agents"), agents, (a) => [
      [String(a.name)], [a.host == null ? DASH : String(a.host)],
      [int(a.workers), "num"], [int(a.clients), "num"], [fixed(a.rps, 1), "num"],
      // cpu is a fraction of one core (may pass 100 % with several workers)
      [isNum(a.cpu) ? (100 * a.cpu).toFixed(0) : DASH, "num"],
      [ms(a.loop_lag_ms), "num"], [ms(a.clock_offset_ms), "num"],
      [a.state == null ? DASH : String(a.state)],
      [a.saturated ? "SATURATED" : "", a.saturated ? "mark bad" : ""],
    ], (a) => (a.state === "lost" || a.state === "left" ? "agent-gone" : ""));
  }

  function renderConfig(config) {
    if (!changed("config", config)) return;
    const entries = config && typeof config === "object" ? Object.entries(config) : [];
    fillRows($("config"), entries, ([k, v]) => [[k, "key"], [configValue(v), "val"]]);
  }

  // ---- the stream ----
  let source = null;

  function connect() {
    source = new EventSource("/api/events");
    source.addEventListener("open", () => setConn("live", "live"));
    source.addEventListener("state", (ev) => {
      let snap;
      try {
        snap = JSON.parse(ev.data);
      } catch (err) {
        setConn("received an unreadable event", "bad");
        return;
      }
      if (!snap || typeof snap !== "object") return;
      setConn("live", "live");
      render(snap);
      if (phase === "finished") {
        // nothing more will come; closing also spares reconnection errors once the
        // master exits
        source.close();
        setConn("run finished", "done");
      }
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // the browser gave up (e.g. a non-stream answer): try again ourselves
        setConn("disconnected, retrying", "bad");
        setTimeout(() => { if (phase !== "finished") connect(); }, 3000);
      } else {
        setConn("disconnected, retrying", "bad");
      }
    });
  }

  function setConn(text, cls) {
    const el = $("conn");
    el.textContent = text;
    el.className = "conn " + cls;
  }

  // ---- the Stop button ----
  const noConfirm = new URLSearchParams(window.location.search).get("noconfirm") === "1";

  function stopMessage(text, cls) {
    const el = $("stop-msg");
    el.hidden = false;
    el.textContent = text;
    el.className = "stop-msg " + (cls || "");
  }

  function updateStopButton() {
    $("stop").disabled = stopBusy || stopAccepted || phase === "stopping" || phase === "finished";
  }

  async function postStop(token) {
    const headers = { "X-Dashboard": "stop" };
    if (token !== undefined) headers["X-Stop-Token"] = token;
    const resp = await fetch("/api/stop", { method: "POST", headers, cache: "no-store" });
    let body = {};
    try { body = await resp.json(); } catch (err) { body = {}; }
    return { status: resp.status, ok: resp.ok, body: body && typeof body === "object" ? body : {} };
  }

  async function stop() {
    if (!noConfirm && !window.confirm("Stop the run? Calls in flight may finish first.")) return;
    stopBusy = true;
    $("stop").disabled = true;
    stopMessage("asking the master to stop…");
    try {
      let r = await postStop();
      // token_required comes with a 403; looked at alone so that any status works
      if (r.body.token_required && !r.body.stopping) {
        // not on the master's machine: the token the master printed at start is needed
        const token = window.prompt("Stop token (printed by loadmaster when the run started):");
        if (token === null || token.trim() === "") {
          stopMessage("stop cancelled: no token given");
          return;
        }
        r = await postStop(token.trim());
      }
      if (r.ok && r.body.stopping) {
        stopAccepted = true;
        stopMessage("stop requested: the master is stopping the run", "good");
      } else {
        const why = r.body.error ? String(r.body.error) : "HTTP " + r.status;
        stopMessage("stop refused: " + why, "bad");
      }
    } catch (err) {
      stopMessage("stop failed: the master could not be reached", "bad");
    } finally {
      stopBusy = false;
      updateStopButton();
    }
  }

  $("stop").addEventListener("click", stop);
  connect();
})();
