// qkdtwin dashboard: polls /api/state and /api/events, draws the QKD network with
// cytoscape (served locally), and drives the demonstration controls.
(function () {
  "use strict";
  const COLORS = { up: "#2e9d46", connecting: "#e0b000", alarm: "#ff6f00", down: "#d32f2f",
                   cut: "#000000", unknown: "#aaaaaa" };
  const CAT = { request: "#d62728", auth: "#9467bd", config: "#2ca02c", qkd_key: "#e6b800",
                relay: "#1f77b4", response: "#b00000", alarm: "#ff7f0e", end: "#7f7f7f",
                error: "#000", operator: "#6d4c41", other: "#bcbd22" };
  let cy = null, lastSeq = 0, selected = null, state = null, busy = false;
  const $ = (s) => document.querySelector(s);
  // the controls' per-run token: from the URL the dashboard printed, kept for this tab
  const TOKEN = (function () {
    const q = new URLSearchParams(location.search);
    if (q.get("token")) {
      sessionStorage.setItem("qkdtwin-token", q.get("token"));
      history.replaceState(null, "", location.pathname);  // not left in the address bar
    }
    return sessionStorage.getItem("qkdtwin-token") || "";
  })();

  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1e6) return (v / 1e6).toFixed(2) + " Mb/s";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + " kb/s";
    return Math.round(v) + " b/s";
  }
  function fmtBits(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 8e6) return (v / 8e6).toFixed(2) + " MB";
    if (v >= 8e3) return (v / 8e3).toFixed(1) + " kB";
    return Math.round(v) + " b";
  }
  function fmtQber(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(2) + " %"; }
  // key held for the link: the QKD module's store, and the KMs' link pools when reported
  function storedText(l) {
    const pools = Object.values(l.pool_bits || {});
    const mod = fmtBits(l.stored_bits);
    return pools.length ? mod + " + KM " + fmtBits(Math.min.apply(null, pools)) : mod;
  }
  function toast(msg) {
    const t = $("#toast"); t.textContent = msg; t.style.display = "block";
    clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.style.display = "none"), 5000);
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function buildGraph(s) {
    const kms = s.nodes.filter((n) => n.roles.includes("km"));
    const elements = kms.map((n) => ({ data: { id: n.id, label: n.id, pos: n.pos || null } }))
      .concat(s.links.map((l) => ({ data: { id: l.id, source: l.a, target: l.b, label: "" } })));
    cy = cytoscape({
      container: $("#graph"), elements: elements, wheelSensitivity: 0.2,
      style: [
        { selector: "node", style: { "background-color": "#37474f", label: "data(label)",
          color: "#fff", "text-valign": "center", "font-size": 13, width: 46, height: 46,
          "border-width": 3, "border-color": "#cfd8dc" } },
        { selector: "node.onpath", style: { "border-color": "#1e88e5", "border-width": 6 } },
        { selector: "edge", style: { width: 5, "line-color": "data(color)", label: "data(label)",
          "font-size": 9, "text-wrap": "wrap", "text-background-color": "#fff",
          "text-background-opacity": 0.85, "text-background-padding": 2, "curve-style": "bezier" } },
        { selector: "edge.onpath", style: { "underlay-color": "#1e88e5", "underlay-padding": 6,
          "underlay-opacity": 0.45 } },
        { selector: "edge.cut", style: { "line-style": "dashed" } },
      ],
      layout: { name: "preset" },
    });
    layoutGraph();
    window.qkdtwinGraph = cy;  // for the browser tests and the console
    cy.on("tap", "edge", (e) => toast(e.target.id() + ": " + e.target.data("label").replace(/\n/g, " · ")));
  }

  // A hub (a node linked to most others, like km0 in star6) in the middle and the others on
  // a circle, ordered so that nodes linked to each other sit side by side; else cose.
  function layoutGraph() {
    if (cy.nodes().length && cy.nodes().every((n) => Array.isArray(n.data("pos")))) {
      // the lab places its nodes (km): draw them there, north up, about 1000 px across
      const xs = cy.nodes().map((n) => n.data("pos")[0]), ys = cy.nodes().map((n) => n.data("pos")[1]);
      const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), 1);
      const k = 1000 / span;
      cy.layout({ name: "preset", animate: false,
                  positions: (n) => ({ x: k * n.data("pos")[0], y: -k * n.data("pos")[1] }) }).run();
      cy.fit(undefined, 40);
      document.body.dataset.layout = "coordinates";
      return;
    }
    const nodes = cy.nodes().sort((a, b) => b.degree() - a.degree());
    const hub = nodes[0];
    if (!hub || hub.degree() < 3 || hub.degree() < nodes.length - 2) {
      cy.layout({ name: "cose", animate: false, nodeRepulsion: () => 40000,
                  idealEdgeLength: () => 160 }).run();
      cy.fit(undefined, 60);
      return;
    }
    const outer = nodes.filter((n) => n.id() !== hub.id()).map((n) => n.id()).sort();
    const order = [], seen = new Set();
    const visit = (id) => {
      if (seen.has(id)) return;
      seen.add(id); order.push(id);
      cy.getElementById(id).neighborhood("node").map((n) => n.id()).sort()
        .forEach((m) => { if (m !== hub.id()) visit(m); });
    };
    outer.forEach(visit);
    const r = 260, pos = {};
    pos[hub.id()] = { x: 0, y: 0 };
    order.forEach((id, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / order.length;
      pos[id] = { x: r * Math.cos(a), y: r * Math.sin(a) };
    });
    cy.layout({ name: "preset", positions: (n) => pos[n.id()], animate: false }).run();
    cy.fit(undefined, 60);
  }

  function linkRow(l) {
    const tr = el("tr", { "data-link": l.id });
    tr.appendChild(el("td", {}, l.id));
    const st = el("td", { class: "state" }); st.appendChild(el("span", { class: "st-" + l.state }, l.state));
    if (l.alarm) st.appendChild(document.createTextNode(" " + l.alarm));
    tr.appendChild(st);
    tr.appendChild(el("td", {}, fmtRate(l.skr_bps)));
    tr.appendChild(el("td", {}, fmtQber(l.qber)));
    tr.appendChild(el("td", { title: "QKD module store / KM link pools" }, storedText(l)));
    tr.appendChild(el("td", {}, l.eve_fraction ? Math.round(100 * l.eve_fraction) + " %" : "off"));
    const td = el("td");
    const eveOn = l.eve_fraction > 0;
    const be = el("button", { "data-action": eveOn ? "eve-off" : "eve-on", class: eveOn ? "on" : "" },
                  eveOn ? "Eve off" : "Eve on");
    be.onclick = () => act(l.id, "eve", { fraction: eveOn ? 0 : 0.5 });
    const bc = el("button", { "data-action": l.cut ? "restore" : "cut" }, l.cut ? "restore" : "cut");
    bc.onclick = () => act(l.id, l.cut ? "restore" : "cut", {});
    if (!state.controls) { be.disabled = true; bc.disabled = true; }
    td.appendChild(be); td.appendChild(bc); tr.appendChild(td);
    return tr;
  }

  function sessionRow(s) {
    const ended = s.state === "terminated" || s.state === "rejected";
    const tr = el("tr", { "data-session": s.id, class: (selected === s.id ? "sel " : "") + (ended ? "ended" : "") });
    tr.appendChild(el("td", { title: s.id }, s.id.slice(0, 8)));
    tr.appendChild(el("td", {}, (s.saes || []).filter(Boolean).join(" → ")));
    tr.appendChild(el("td", {}, s.api || ""));
    const p = el("td", { class: "path" }, (s.path || []).join("-") || "…");
    if (s.reroutes) {
      p.appendChild(el("span", { class: "reroute", title: "was " + (s.old_path || []).join("-") },
                       " ↻" + s.reroutes + " (was " + (s.old_path || []).join("-") + ")"));
    }
    tr.appendChild(p);
    tr.appendChild(el("td", {}, String(s.keys)));
    tr.appendChild(el("td", {}, s.state + (s.reason ? ": " + s.reason : "")));
    tr.onclick = () => { selected = selected === s.id ? null : s.id; render(); };
    return tr;
  }

  function render() {
    const s = state;
    $("#lab").textContent = s.lab;
    const c = $("#conn");
    c.textContent = s.connected ? "broker connected" : "broker not connected";
    c.className = "badge " + (s.connected ? "ok" : "bad");
    const active = s.sessions.filter((x) => x.state === "active").length;
    const bad = s.links.filter((l) => l.state !== "up").length;
    $("#summary").textContent = s.links.length + " QKD links (" + bad + " not up), " + active +
      " active sessions, " + s.messages + " messages";
    if (!cy) buildGraph(s);
    const sel = s.sessions.find((x) => x.id === selected);
    const onPathLinks = new Set(), onPathNodes = new Set(sel && sel.path ? sel.path : []);
    if (sel && sel.path) for (let i = 0; i + 1 < sel.path.length; i++) {
      onPathLinks.add(sel.path[i] + "-" + sel.path[i + 1]); onPathLinks.add(sel.path[i + 1] + "-" + sel.path[i]);
    }
    s.links.forEach((l) => {
      const e = cy.getElementById(l.id);
      if (!e || e.empty()) return;
      const parts = [fmtRate(l.skr_bps), "QBER " + fmtQber(l.qber)];
      parts.push("stored " + storedText(l));
      if (l.eve_fraction > 0) parts.push("EVE " + Math.round(100 * l.eve_fraction) + "%");
      if (l.alarm) parts.push("ALARM " + l.alarm);
      e.data({ color: COLORS[l.state] || "#aaa", label: parts.join("\n"), state: l.state });
      e.toggleClass("cut", l.state === "cut");
      e.toggleClass("onpath", onPathLinks.has(l.id));
    });
    cy.nodes().forEach((n) => n.toggleClass("onpath", onPathNodes.has(n.id())));
    // filters: a link state, and the selected session's path (large labs)
    const want = $("#linkfilter").value, pathOnly = $("#pathonly").checked && sel && sel.path;
    const shown = s.links.filter((l) => (want === "all" || (want === "notup" ? l.state !== "up"
      : l.state === want)) && (!pathOnly || onPathLinks.has(l.id)));
    const shownIds = new Set(shown.map((l) => l.id));
    cy.edges().forEach((e) => e.style("display", shownIds.has(e.id()) ? "element" : "none"));
    cy.nodes().forEach((n) => n.style("display",
      !pathOnly || onPathNodes.has(n.id()) ? "element" : "none"));
    const lt = $("#links tbody"); lt.replaceChildren.apply(lt, shown.map(linkRow));
    const st = $("#sessions tbody"); st.replaceChildren.apply(st, s.sessions.slice().reverse().map(sessionRow));
  }

  function addEvents(evs) {
    const ol = $("#events");
    evs.forEach((e) => {
      const li = el("li", { "data-kind": e.kind, "data-category": e.category, title: JSON.stringify(e.detail) });
      const dot = el("i"); dot.style.background = CAT[e.category] || "#999"; li.appendChild(dot);
      const t = new Date(e.ts * 1000).toISOString().slice(11, 23);
      const d = e.detail || {};
      const extra = ["link", "path", "role", "sae_id", "alarm", "reason", "fraction"]
        .filter((k) => d[k] !== undefined && d[k] !== null)
        .map((k) => k + "=" + (Array.isArray(d[k]) ? d[k].join("-") : d[k])).join(" ");
      li.appendChild(document.createTextNode(t + " " + e.element + " " + e.kind +
        (e.session_id ? " [" + e.session_id.slice(0, 8) + "]" : "") + (extra ? " " + extra : "")));
      ol.insertBefore(li, ol.firstChild);
    });
    while (ol.children.length > 300) ol.removeChild(ol.lastChild);
    $("#evcount").textContent = "(" + lastSeq + ")";
  }

  async function act(link, what, body) {
    if (busy) return;
    busy = true; toast(what + " " + link + " …");
    try {
      const r = await fetch("/api/links/" + encodeURIComponent(link) + "/" + what,
        { method: "POST", body: JSON.stringify(body),
          headers: { "Content-Type": "application/json", "X-Qkdtwin-Token": TOKEN } });
      const j = await r.json();
      toast(r.ok ? what + " " + link + ": done" : what + " " + link + " failed: " + j.error);
    } catch (err) { toast("request failed: " + err); }
    busy = false; poll();
  }

  async function poll() {
    try {
      const [r1, r2] = await Promise.all([fetch("/api/state"), fetch("/api/events?after=" + lastSeq)]);
      state = await r1.json();
      const ev = await r2.json();
      if (ev.seq < lastSeq) { lastSeq = 0; $("#events").replaceChildren(); }  // server restarted
      if (ev.events.length) { lastSeq = ev.events[ev.events.length - 1].seq; addEvents(ev.events); }
      render();
      document.body.dataset.ready = "1";
    } catch (err) {
      $("#conn").textContent = "dashboard server not reachable"; $("#conn").className = "badge bad";
    }
  }
  for (const id of ["#linkfilter", "#pathonly"]) $(id).onchange = () => { if (state) render(); };
  poll();
  setInterval(poll, 1000);
})();
