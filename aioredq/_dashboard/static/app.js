// The dashboard page. Everything that came from Redis is set with textContent, never as HTML.
"use strict";
(function () {
  const WINDOW = 15 * 60;
  const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#9c36b5", "#e8590c", "#0b7285", "#c2255c", "#5c940d"];
  const FIGURES = ["length", "lag", "pending", "consumers", "oldest_pending_s", "processing", "delayed", "dead", "subscribers"];
  const $ = (id) => document.getElementById(id);
  const state = { session: null, samples: [], last: 0, interval: 1, rows: [], dead: null, pages: [], confirm: null };

  function cell(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function button(text, onclick, cls) {
    const b = cell("button", text, cls);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.session.csrf || "" },
      body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || String(response.status));
    return data;
  }

  function canWrite() {
    return state.session && state.session.writable && state.session.authenticated;
  }

  async function loadSession() {
    state.session = await api("api/session");
    $("url").textContent = state.session.url;
    const mode = !state.session.writable ? "read-only (no token set)" : canWrite() ? "logged in" : "read-only until you log in";
    $("mode").textContent = mode;
    $("login").hidden = !state.session.writable || state.session.authenticated;
    $("logout").hidden = !canWrite();
    for (const b of document.querySelectorAll("button.write")) b.hidden = !canWrite();
  }

  // figures ------------------------------------------------------------------------------
  function figureText(row, name) {
    if (row.errors && name in row.errors) return "ERR";
    const v = row[name];
    if (v === null || v === undefined) return "-";
    if (typeof v === "object") return v.alive + "/" + v.dead;
    return String(v);
  }

  function renderRows(data) {
    const body = $("handlers").tBodies[0];
    const rows = [];
    const notes = [];
    for (const row of data.handlers) {
      const tr = document.createElement("tr");
      tr.dataset.handler = row.name;
      const name = cell("td", row.name);
      name.appendChild(cell("span", row.key, "key"));
      tr.append(name, cell("td", row.kind));
      const limit = data.lag_warning[row.name];
      for (const f of FIGURES) {
        const over = f === "lag" && limit !== undefined && row.lag !== null && row.lag > limit;
        const bad = over || (row.errors && f in row.errors);
        const td = cell("td", figureText(row, f), "num" + (bad ? " bad" : ""));
        td.dataset.figure = f;
        tr.appendChild(td);
        if (over) notes.push(row.name + ": lag " + row.lag + " is over lag_warning " + limit);
      }
      for (const f in row.errors || {}) notes.push(row.name + ": " + f + " unreadable: " + row.errors[f]);
      const actions = cell("td");
      if (row.kind === "task" || (row.kind === "stream" && row.lag !== null)) {
        actions.appendChild(button("dead letters", () => openDead(row.name)));
      }
      tr.appendChild(actions);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $("notes").replaceChildren(...notes.map((n) => cell("li", n)));
  }

  // charts -------------------------------------------------------------------------------
  function rate(a, b, field) {
    const dt = b.t - a.t;
    const va = a.h[field[0]], vb = b.h[field[0]];
    if (!va || !vb || dt <= 0) return null;
    const x = va[field[1]], y = vb[field[1]];
    if (typeof x !== "number" || typeof y !== "number") return null;
    return Math.max(0, y - x) / dt;
  }

  function drawCharts() {
    const samples = state.samples;
    const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    const names = state.rows.map((r) => r.name);
    // This process's counters move only when it runs consumers too; then they are exact.
    const local = samples.some((s) => Object.values(s.h).some((h) => h.succeeded || h.failed));
    $("processed-title").textContent = local ? "processed/s (this process's handlers)" : "drained/s (fall in lag or length, from Redis)";
    $("failed-title").textContent = local ? "failed/s (this process's handlers)" : "dead-lettered/s (rise in dead letters, from Redis)";
    $("chart-note").textContent = "Kept in the dashboard process (one sample per " + state.interval + " s); a restart starts it afresh.";
    const series = { processed: [], failed: [], backlog: [] };
    const legend = [];
    names.forEach((name, i) => {
      const color = COLORS[i % COLORS.length];
      const p = [], f = [], b = [];
      for (let k = 0; k < samples.length; k++) {
        const s = samples[k], h = s.h[name];
        if (!h) continue;
        if (typeof h.backlog === "number") b.push([s.t, h.backlog]);
        if (k === 0) continue;
        const prev = samples[k - 1];
        let v;
        if (local) {
          v = rate(prev, s, [name, "succeeded"]);
        } else {
          const was = prev.h[name];
          const dt = s.t - prev.t;
          v = was && typeof was.backlog === "number" && typeof h.backlog === "number" && dt > 0 ? Math.max(0, was.backlog - h.backlog) / dt : null;
        }
        if (v !== null) p.push([s.t, v]);
        const w = rate(prev, s, [name, local ? "failed" : "dead"]);
        if (w !== null) f.push([s.t, w]);
      }
      series.processed.push({ name, color, points: p });
      series.failed.push({ name, color, points: f });
      series.backlog.push({ name, color, points: b });
      const item = cell("span");
      const swatch = cell("i");
      swatch.style.background = color;
      item.append(swatch, document.createTextNode(name));
      legend.push(item);
    });
    // The x axis spans what the ring holds (at least a minute, at most 15): a dashboard that
    // started a moment ago does not squeeze its few samples against the right edge.
    const first = samples.length ? samples[0].t : now;
    const start = Math.max(now - WINDOW, Math.min(first, now - 60));
    const draw = window.aioredqCharts.draw;
    draw($("chart-processed"), series.processed, start, now);
    draw($("chart-failed"), series.failed, start, now);
    draw($("chart-backlog"), series.backlog, start, now);
    $("legend").replaceChildren(...legend);
  }

  async function poll() {
    try {
      const data = await api("api/figures?since=" + state.last);
      state.interval = data.interval;
      state.rows = data.handlers;
      for (const s of data.samples) state.samples.push(s);
      if (state.samples.length) state.last = state.samples[state.samples.length - 1].t;
      const cut = state.last - WINDOW;
      while (state.samples.length && state.samples[0].t < cut) state.samples.shift();
      renderRows(data);
      drawCharts();
      $("error").hidden = !data.error;
      $("error").textContent = data.error ? "Redis: " + data.error + " (showing the last figures read)" : "";
      $("status").textContent = data.at ? "updated " + new Date(data.at * 1000).toLocaleTimeString() : "";
    } catch (err) {
      $("status").textContent = "dashboard unreachable: " + err.message;
    }
    setTimeout(poll, Math.max(1, state.interval) * 1000);
  }

  // dead letters -------------------------------------------------------------------------
  function openDead(name) {
    state.dead = name;
    state.pages = [{ start: 0, cursor: null }];
    $("dead").hidden = false;
    $("dead-name").textContent = name;
    $("dead-message").textContent = "";
    hideConfirm();
    loadDead();
  }

  function when(value) {
    const n = Number(value);
    if (value === null || value === undefined || value === "" || !isFinite(n)) return value;
    return new Date(n > 1e11 ? n : n * 1000).toLocaleString();
  }

  function clipped(c) {
    const pre = cell("pre", c.text);
    if (c.more) pre.appendChild(cell("span", " ... (" + c.more + " more characters)", "dim"));
    return pre;
  }

  async function loadDead() {
    const page = state.pages[state.pages.length - 1];
    const q = "api/dead?handler=" + encodeURIComponent(state.dead) + "&start=" + page.start + (page.cursor ? "&cursor=" + encodeURIComponent(page.cursor) : "");
    let data;
    try {
      data = await api(q);
    } catch (err) {
      $("dead-message").textContent = err.message;
      return;
    }
    $("dead-total").textContent = data.total === null ? "" : "(" + data.total + ")";
    const rows = data.letters.map((letter) => {
      const tr = document.createElement("tr");
      const td = cell("td");
      td.appendChild(clipped(letter.body));
      const err = cell("td");
      err.appendChild(clipped(letter.error));
      const actions = cell("td");
      if (canWrite() && letter.id !== null) actions.appendChild(button("Requeue", () => requeue([letter.id]), "requeue"));
      tr.append(cell("td", letter.id === null ? "-" : letter.id), cell("td", when(letter.failed_at)), cell("td", letter.attempts), err, td, actions);
      return tr;
    });
    if (!rows.length) rows.push(cell("tr"));
    if (!data.letters.length) rows[0].appendChild(cell("td", "no dead letters here", "dim"));
    $("letters").tBodies[0].replaceChildren(...rows);
    page.next = data.more ? { start: page.start + data.letters.length, cursor: data.cursor || null } : null;
    $("older").disabled = !page.next;
    $("newer").disabled = state.pages.length < 2;
  }

  async function requeue(ids) {
    try {
      const r = await api("api/requeue", { handler: state.dead, ids });
      let text = "requeued " + r.requeued;
      if (r.missing.length) text += "; not found: " + r.missing.join(", ");
      if (r.skipped.length) text += "; skipped: " + r.skipped.join("; ");
      $("dead-message").textContent = text;
    } catch (err) {
      $("dead-message").textContent = "refused: " + err.message;
    }
    loadDead();
  }

  function showConfirm(text, action) {
    state.confirm = action;
    $("confirm-text").textContent = text;
    $("confirm").hidden = false;
  }

  function hideConfirm() {
    state.confirm = null;
    $("confirm").hidden = true;
  }

  async function purge() {
    try {
      const r = await api("api/purge", { handler: state.dead });
      $("dead-message").textContent = "purged " + r.purged;
    } catch (err) {
      $("dead-message").textContent = "refused: " + err.message;
    }
    state.pages = [{ start: 0, cursor: null }];
    loadDead();
  }

  // feature sections (shown only when the app has the feature) --------------------------
  async function loadSection(info, host) {
    const body = host.querySelector("div");
    const render = (window.aioredqSections || {})[info.name];
    const ctx = {
      writable: canWrite(),
      tokenSet: Boolean(state.session && state.session.writable),
      post: (action, data) => api("api/section/" + encodeURIComponent(info.name) + "/" + encodeURIComponent(action), data || {}),
      reload: () => loadSection(info, host),
      cell, button,
    };
    clearTimeout(host.refresh);
    try {
      const data = await api("api/section/" + encodeURIComponent(info.name));
      // An unchanged answer keeps the elements as they are (a button being clicked stays put).
      const text = JSON.stringify(data);
      if (text !== host.shown) {
        host.shown = text;
        if (render) host.wait = render(body, data, ctx);
        else body.replaceChildren(cell("pre", JSON.stringify(data, null, 2)));
      }
    } catch (err) {
      host.shown = null;
      body.replaceChildren(cell("p", err.message, "error"));
    }
    if (render && render.refresh) {
      clearTimeout(host.refresh);
      const wait = typeof host.wait === "number" ? host.wait : render.refresh;
      host.refresh = setTimeout(ctx.reload, wait * 1000);
    }
  }

  function addSections() {
    for (const info of state.session.sections || []) {
      const host = cell("section");
      host.dataset.section = info.name;
      host.append(cell("h2", info.title), cell("div"));
      $("dead").before(host);
      loadSection(info, host);
    }
  }

  function wire() {
    $("dead-refresh").addEventListener("click", loadDead);
    $("older").addEventListener("click", () => {
      const next = state.pages[state.pages.length - 1].next;
      if (next) { state.pages.push(next); loadDead(); }
    });
    $("newer").addEventListener("click", () => {
      if (state.pages.length > 1) { state.pages.pop(); loadDead(); }
    });
    $("requeue-all").addEventListener("click", () => showConfirm("Requeue every dead letter of " + state.dead + "?", () => requeue(null)));
    $("purge").addEventListener("click", () => showConfirm("Delete every dead letter of " + state.dead + " for good?", purge));
    $("confirm-yes").addEventListener("click", () => { const a = state.confirm; hideConfirm(); if (a) a(); });
    $("confirm-no").addEventListener("click", hideConfirm);
  }

  wire();
  loadSession().then(addSections).catch((err) => { $("status").textContent = err.message; }).finally(poll);
})();
